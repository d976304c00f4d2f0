"""Helpers for tests that drive the `mopd` command line."""

from __future__ import annotations

from pathlib import Path


def distill_cli(tmp_path: Path, cfg: dict) -> list[dict]:
    """Run `mopd distill` on `cfg` (written as YAML under tmp_path); returns its metrics rows."""
    import yaml
    from typer.testing import CliRunner

    from mopd.cli import app
    from mopd.training.metrics import read_metrics

    path = tmp_path / "mopd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["distill", str(path)])
    assert result.exit_code == 0, result.output
    return read_metrics(Path(cfg["output_dir"]) / "metrics.jsonl")
