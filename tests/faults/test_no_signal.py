"""A stage that cannot learn says so early and stops, instead of running on at reward 0.

A user domain whose reward is 0 for everything the model writes: the SFT init solves none of
it (a warning naming the domain and the knob), its GRPO teacher sees every group at reward 0
(every group dropped, no token to learn from), and after `teacher.optim.max_empty_in_a_row` such
steps `mopd reproduce` stops with one error naming the cause and the knobs, exit code 1.
"""

from __future__ import annotations

import logging
import re

import yaml
from typer.testing import CliRunner

from mopd.cli import app

NEVER = '''
name = "never"

def train_examples():
    return [{"prompt": f"q:{a}{b}=", "answer": "unreachable"} for a in "abcd" for b in "efgh"]

def eval_examples():
    return train_examples()[:4]

def reward(completion, example):
    return 0.0
'''


def test_a_stage_without_learning_signal_stops_early_with_the_cause(tmp_path, caplog):
    (tmp_path / "never.py").write_text(NEVER)
    cfg = {
        "domains": [{"name": "never", "builtin": f"python:{tmp_path / 'never.py'}"}],
        "base": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "sft": {"steps": 2, "batch_size": 8},
        "teacher": {"sampling": {"prompts_per_step": 4, "rollouts_per_prompt": 4, "max_new_tokens": 4},
                    "optim": {"steps": 50, "lr": 3e-4, "max_empty_in_a_row": 3}},
        "mopd": {"sampling": {"prompts_per_step": 4, "max_new_tokens": 4}, "optim": {"steps": 2, "lr": 3e-4}},
        "baselines": [],
        "eval": {"samples": 1, "max_new_tokens": 4, "curve_points": 1},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.WARNING):
        res = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["reproduce", str(path), "--output-dir",
                                                             str(tmp_path / "out")])
    out = re.sub(r"\s+", " ", res.output)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert "teacher never: 3 steps in a row had no token to learn from" in out
    assert "max_empty_in_a_row" in out and "sft.steps" in out
    assert any("solves none of domain 'never'" in r.getMessage() for r in caplog.records)
    # Stopped at step 3 of 50, with a checkpoint to resume from after changing a setting.
    assert (tmp_path / "out" / "teacher_never" / "checkpoints").is_dir()
    assert (tmp_path / "out" / "sft" / "result.json").is_file()  # finished stages are kept
