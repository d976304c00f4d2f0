"""Helpers for tests that drive the `mopd` command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A free local TCP port (for `accelerate launch --main_process_port`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_cpu_processes(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`accelerate launch` of two ranks on the CPU (gloo), as on GPUs: `args` is what follows the
    launcher's own options (a script and its arguments, or `-m mopd.cli ...`)."""
    # --multi_gpu makes accelerate start one process per rank (torchrun); with device 'cpu' in
    # the config each of them trains on the CPU over gloo. (`--cpu` alone starts one process.)
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def distill_cli(tmp_path: Path, cfg: dict) -> list[dict]:
    """Run `mopd distill` on `cfg` (written as YAML under tmp_path); returns its metrics rows."""
    import yaml
    from typer.testing import CliRunner

    from mopd.cli import app

    path = tmp_path / "mopd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["distill", str(path)])
    assert result.exit_code == 0, result.output
    return read_metrics(Path(cfg["output_dir"]) / "metrics.jsonl")
