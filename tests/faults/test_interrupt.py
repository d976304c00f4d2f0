"""Interruptions: SIGTERM saves and exits, SIGKILL mid-checkpoint leaves the last good one,
and --resume from what is on disk ends with the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from faultkit import run_data, teacher_dir
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from mopd.build import build_run
from mopd.cli import app
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.training.checkpoint import STATE_FILE, latest_checkpoint, list_checkpoints, load_trainer_state
from mopd.training.loop import run_onpolicy

STEPS = 8

# `mopd distill` with each step slowed down (so a signal lands mid-run) and, when
# MOPD_SLOW_SAVE names a checkpoint, that checkpoint's write stalled after the model files.
SLOW_CLI = """
import os, pathlib, sys, time
import mopd.training.checkpoint as ckpt, mopd.training.step as step_mod
step, save = step_mod.train_one_step, ckpt.save_pretrained
def slow_step(run, **kw):
    out = step(run, **kw)
    time.sleep(0.4)
    return out
def stalled_save(model, tok, directory):
    save(model, tok, directory)
    if pathlib.Path(directory).name == os.environ.get("MOPD_SLOW_SAVE"):
        pathlib.Path(directory).parent.joinpath("writing").touch()
        time.sleep(60)
step_mod.train_one_step, ckpt.save_pretrained = slow_step, stalled_save
from mopd.cli import app
sys.argv[0] = "mopd"
app()
"""


def write_config(tmp_path: Path, name: str) -> Path:
    data = run_data(tmp_path / name, {"model": {"path": str(teacher_dir(tmp_path))}}, steps=STEPS)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Final weights of the uninterrupted run."""
    tmp = tmp_path_factory.mktemp("straight")
    run = build_run(load_config(write_config(tmp, "run"), RunConfig))
    run_onpolicy(run)
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def start(config: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, "distill", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200", **env})


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"mopd exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        assert time.time() - t0 < timeout, "timed out waiting for the training subprocess"
        time.sleep(0.05)


def same_as(weights: dict, model_dir: Path) -> bool:
    saved = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    return saved.keys() == weights.keys() and all(torch.equal(weights[k], saved[k]) for k in saved)


def test_sigterm_saves_a_checkpoint_and_resume_matches_the_straight_run(tmp_path, straight):
    config = write_config(tmp_path, "run")
    out = tmp_path / "run"
    proc = start(config)
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    step = len(metrics.read_text().splitlines())
    assert 3 <= step < STEPS
    assert f"stopped by SIGTERM at step {step}" in err and f"distill {config} --resume" in err
    saved = latest_checkpoint(out / "checkpoints")
    assert saved.name == f"step-{step:06d}" and load_trainer_state(saved)["step"] == step
    assert not (out / "final").exists()

    res = CliRunner().invoke(app, ["distill", str(config), "--resume"])
    assert res.exit_code == 0, res.output
    assert same_as(straight, out / "final")


def test_sigkill_mid_checkpoint_leaves_the_last_good_one(tmp_path, straight):
    config = write_config(tmp_path, "run")
    ckpts = tmp_path / "run" / "checkpoints"
    proc = start(config, MOPD_SLOW_SAVE=".tmp-step-000004")
    wait_for(lambda: (ckpts / "writing").exists(), proc)
    proc.kill()  # SIGKILL: no handler runs, the write stays half done
    proc.communicate(timeout=60)
    half = ckpts / ".tmp-step-000004"
    assert (half / "model.safetensors").is_file() and not (half / STATE_FILE).exists()
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000002"]
    good = latest_checkpoint(ckpts)
    AutoModelForCausalLM.from_pretrained(good)  # loadable as it is
    assert load_trainer_state(good)["step"] == 2

    run = build_run(load_config(config, RunConfig))
    run_onpolicy(run, resume=True)
    assert run.step == STEPS and not half.exists()
    assert all(torch.equal(straight[k], v) for k, v in run.model.state_dict().items())


def test_a_kill_between_the_renames_of_a_replaced_checkpoint_keeps_one(tmp_path):
    """Replacing step-N moves the old one to .old-step-N before the new one is renamed in;
    a kill in between leaves .old-step-N, which still counts, and .del- leftovers never do."""
    ckpts = tmp_path / "ckpts"
    for name in (".old-step-000004", ".tmp-step-000004", ".del-step-000002", "step-000003"):
        (ckpts / name).mkdir(parents=True)
        torch.save({"step": int(name[-1])}, ckpts / name / STATE_FILE)
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000003", ".old-step-000004"]
    (ckpts / "step-000004").mkdir()
    torch.save({"step": 4}, ckpts / "step-000004" / STATE_FILE)
    assert latest_checkpoint(ckpts).name == "step-000004"  # the real name wins
