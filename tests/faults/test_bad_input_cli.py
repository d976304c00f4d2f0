"""Bad input a new user gives the CLI ends in one line naming the problem, never a traceback.

A user domain file that raises on import, an output_dir that is a file, a damaged newest
checkpoint, a model path that does not exist: each exits non-zero with a one-line error (or,
for the checkpoint, resumes from the older intact one with a warning) and loses nothing.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import yaml
from typer.testing import CliRunner

from faultkit import run_data, teacher_dir
from mopd.cli import app
from mopd.models.loading import looks_like_path
from mopd.pipeline.presets import PRESETS
from mopd.training.checkpoint import checkpoint_problem, list_checkpoints

runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
SELF = {"kind": "self"}


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def write(tmp_path, data: dict, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def failed_with(res, *parts: str) -> str:
    """The run exited non-zero with no traceback, and one line of its output holds every part."""
    out = plain(res.output)
    assert res.exit_code != 0, out
    assert "Traceback" not in out and isinstance(res.exception, SystemExit), out + repr(res.exception)
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert any(all(p in line for p in parts) for line in lines), out
    return out


def test_domain_file_that_raises_on_import(tmp_path):
    (tmp_path / "my_domain.py").write_text("import math\n\nSCALE = 1 / 0\n")
    data = run_data(tmp_path / "out", SELF)
    data["domains"][0]["prompts"] = {"builtin": f"python:{tmp_path / 'my_domain.py'}"}
    res = runner.invoke(app, ["distill", write(tmp_path, data)])
    failed_with(res, "domain 'rev'", "my_domain.py raised ZeroDivisionError: division by zero", "(line 3)")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_domain_file_with_a_syntax_error_in_sft(tmp_path):
    (tmp_path / "bad.py").write_text("def reward(completion, example)\n    return 1.0\n")
    data = PRESETS["micro"]().model_dump()
    data["domains"][0]["builtin"] = f"python:{tmp_path / 'bad.py'}"
    res = runner.invoke(app, ["sft", write(tmp_path, data), "--output-dir", str(tmp_path / "out")])
    failed_with(res, "domain 'reversal'", "bad.py raised SyntaxError", "(line 1)")


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_output_dir_that_is_a_file(tmp_path, monkeypatch, where):
    import mopd.build

    def no_models(*args, **kwargs):
        raise AssertionError("the models were built before the output_dir was checked")

    monkeypatch.setattr(mopd.build, "build_run", no_models)
    taken = tmp_path / "results"
    taken.write_text("the user's own notes\n")
    out = taken if where == "file" else taken / "run1"
    res = runner.invoke(app, ["distill", write(tmp_path, run_data(out, SELF))])
    failed_with(res, f"output_dir {out}", f"{taken} is a file, not a directory")
    assert taken.read_text() == "the user's own notes\n"  # nothing lost


def test_reproduce_and_sft_refuse_an_output_dir_that_is_a_file(tmp_path):
    taken = tmp_path / "results"
    taken.write_text("keep\n")
    for cmd in ("reproduce", "sft"):
        res = runner.invoke(app, [cmd, "--preset", "micro", "--output-dir", str(taken)])
        failed_with(res, f"{taken} is a file, not a directory")
    assert taken.read_text() == "keep\n"


def truncate(path, keep: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_resume_passes_over_a_damaged_newest_checkpoint(tmp_path, caplog):
    out = tmp_path / "out"
    teacher = {"kind": "hf", "model": {"path": str(teacher_dir(tmp_path))}}
    cfg = write(tmp_path, run_data(out, teacher, steps=4))
    assert runner.invoke(app, ["distill", cfg]).exit_code == 0
    ckpts = out / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000002", "step-000004"]
    truncate(ckpts / "step-000004" / "model.safetensors")  # a disk error / partial copy

    with caplog.at_level(logging.INFO):
        res = runner.invoke(app, ["distill", cfg, "--resume"])
    assert res.exit_code == 0, plain(res.output) + repr(res.exception)
    log = caplog.text + plain(res.output)
    assert f"checkpoint {ckpts / 'step-000004'} is damaged (model.safetensors has 100 bytes" in log
    assert f"from {ckpts / 'step-000002'} at step 2" in log  # the older, intact one
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert steps[-2:] == [3, 4]  # steps 3 and 4 redone
    assert checkpoint_problem(ckpts / "step-000004") is None  # the damaged one replaced by a good one
    assert (out / "final" / "model.safetensors").is_file()


def test_resume_with_every_checkpoint_damaged_stops_with_one_line(tmp_path):
    out = tmp_path / "out"
    cfg = write(tmp_path, run_data(out, SELF, steps=2))
    assert runner.invoke(app, ["distill", cfg]).exit_code == 0
    (only,) = list_checkpoints(out / "checkpoints")
    truncate(only / "trainer_state.pt")
    res = runner.invoke(app, ["distill", cfg, "--resume"])
    failed_with(res, "every checkpoint in", "step-000002: trainer_state.pt has 100 bytes", "restore one from a copy")
    assert (only / "model.safetensors").is_file()  # left in place for the user


def test_missing_teacher_path_names_it(tmp_path):
    missing = tmp_path / "models" / "math-teacher"
    res = runner.invoke(app, ["distill", write(tmp_path, run_data(tmp_path / "out", {"model": {"path": str(missing)}}))])
    out = failed_with(res, f"model path {missing} does not exist", "not a hub id")
    assert "Repo id" not in out


def test_missing_student_path_names_it(tmp_path):
    data = run_data(tmp_path / "out", SELF)
    data["student"] = {"path": "./checkpoints/my-student"}
    # A relative path is read from the config file's directory, and named so.
    out = failed_with(runner.invoke(app, ["distill", write(tmp_path, data)]),
                      f"model path {tmp_path / 'checkpoints' / 'my-student'} does not exist", "not a hub id")
    assert "Repo id" not in out


def test_eval_of_a_missing_model_directory(tmp_path):
    missing = tmp_path / "nothing-here"
    res = runner.invoke(app, ["eval", str(missing), "--preset", "micro"])
    failed_with(res, f"model path {missing} does not exist")


@pytest.mark.parametrize("name, is_path", [
    ("gpt2", False), ("Qwen/Qwen2.5-0.5B", False), ("facebook/opt-1.3b", False), ("smollm2", False),
    ("./student", True), ("/abs/model", True), ("~/models/x", True), ("runs/a/final", True),
    ("model.gguf", True), ("org/weights.safetensors", True),
])
def test_which_model_names_are_paths(name, is_path):
    # Hub ids go on to transformers (users with a network download them); paths must exist.
    assert looks_like_path(name) is is_path
