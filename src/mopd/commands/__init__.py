"""The `mopd` commands: run commands in mopd.cli, the pipeline's in mopd.commands.pipeline."""
