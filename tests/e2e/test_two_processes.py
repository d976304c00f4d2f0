"""Two training processes on the CPU (DDP over gloo), started by `accelerate launch` as on GPUs.

Both ranks must end with the same weights, have sampled different prompts, have moved away
from the initial weights, and a run stopped after one step and resumed on both ranks must end
where the straight run ends. Metrics and checkpoints are written once, by rank 0. SFT's own
loop, under the same accelerator, must also end with one model on both ranks.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from cli_runs import launch_two_cpu_processes, read_metrics
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model

WORKER = Path(__file__).with_name("distributed_worker.py")
STEPS = 3


def write_config(tmp_path: Path, dtype: str = "float32", lr: float = 1e-3, **student) -> Path:
    """The two-process run's config (also used by the LoRA two-process test); `student`: extra keys."""
    tok = char_tokenizer()
    save_pretrained(tiny_model(tok, seed=11), tok, tmp_path / "teacher")
    cfg = {
        "seed": 5,
        "student": {"tiny": {"seed": 1}, "dtype": dtype, **student},
        "teachers": [{"name": "t", "model": {"path": str(tmp_path / "teacher")}}, {"name": "me", "kind": "self"}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": {"n_train": 40, "n_eval": 5}},
                     "teacher": "t"},
                    {"name": "sort", "prompts": {"builtin": "sorting", "params": {"n_train": 40, "n_eval": 5}},
                     "teacher": "me"}],
        "sampling": {"prompts_per_step": 8, "max_new_tokens": 6},
        "optim": {"steps": STEPS, "lr": lr, "grad_accum_steps": 2},
        "checkpoint": {"every": 1, "keep": 5},
        "logging": {"progress": False},
        "distributed": {"device": "cpu"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(config: Path, out: Path) -> subprocess.CompletedProcess:
    return launch_two_cpu_processes([str(WORKER), str(config), str(out)], timeout=240)


def test_two_cpu_processes_train_one_model(tmp_path):
    done = launch(write_config(tmp_path), tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["wrapper"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert [r["optimizer"] for r in ranks] == ["AdamW"] * 2
    assert ranks[0]["straight"] == ranks[1]["straight"]  # gradients were averaged: one model
    assert ranks[0]["straight"] != ranks[0]["initial"]  # and it trained
    assert ranks[0]["resumed"] == ranks[0]["straight"] == ranks[1]["resumed"]  # resume reproduces
    assert [r["steps"] for r in ranks] == [[STEPS, STEPS]] * 2

    a, b = ranks[0]["prompts"], ranks[1]["prompts"]
    assert len(a) == len(b) == STEPS and all(len(p) == 4 for p in a + b)  # 8 prompts per step, 4 each
    for step_a, step_b in zip(a, b):
        assert not set(step_a) & set(step_b)  # each rank sampled its own share of the step's prompts

    sft = [r["sft"] for r in ranks]  # SFT's own loop: [before, after] per rank
    assert sft[0][1] == sft[1][1] and sft[0][1] != sft[0][0]

    # one writer: one metrics row per step, and the checkpoints of every step
    assert [m["step"] for m in read_metrics(tmp_path / "out" / "straight" / "metrics.jsonl")] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "out" / "straight" / "checkpoints").iterdir()) == [
        "step-000001", "step-000002", "step-000003"]


def test_two_cpu_processes_train_a_bf16_student_through_master_weights(tmp_path):
    done = launch(write_config(tmp_path, dtype="bfloat16"), tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["optimizer"] for r in ranks] == ["MasterWeightsAdamW"] * 2  # under DDP, as on one process
    assert ranks[0]["straight"] == ranks[1]["straight"] != ranks[0]["initial"]  # one model, and it trained
    assert ranks[0]["resumed"] == ranks[0]["straight"] == ranks[1]["resumed"]  # the copies resume too
