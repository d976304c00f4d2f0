"""Helpers for tests that drive the `mopd` command line."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    """A free local TCP port (for `accelerate launch --main_process_port`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
