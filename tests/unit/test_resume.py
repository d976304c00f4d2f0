"""Checkpoint + resume: a run split in two with --resume ends with the same weights as one
straight run with the same seed."""

import torch

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.training.checkpoint import latest_checkpoint, list_checkpoints
from mopd.training.loop import run_onpolicy


def config(tmp_path, out):
    teacher = tmp_path / "teacher"
    if not teacher.exists():
        tok = char_tokenizer()
        save_pretrained(tiny_model(tok, seed=11), tok, teacher)
    return load_config(None, RunConfig, data={
        "output_dir": str(tmp_path / out), "seed": 3,
        "student": {"tiny": {"seed": 1}},
        "teachers": [{"name": "t", "model": {"path": str(teacher)}}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": {"n_train": 30, "n_eval": 5}},
                     "teacher": "t", "weight": 2},
                    {"name": "sort", "prompts": {"builtin": "sorting", "params": {"n_train": 30, "n_eval": 5}},
                     "teacher": "t"}],
        "sampling": {"prompts_per_step": 5, "max_new_tokens": 5},
        "optim": {"steps": 6, "lr": 1e-3, "schedule": "cosine", "warmup_steps": 1, "grad_accum_steps": 2},
        "checkpoint": {"every": 2, "keep": 2},
        "logging": {"progress": False},
    })


def test_split_run_with_resume_matches_straight_run(tmp_path):
    straight = build_run(config(tmp_path, "straight"))
    run_onpolicy(straight)

    first = build_run(config(tmp_path, "split"))
    run_onpolicy(first, stop_at=3)  # stopped off the checkpoint grid: it saves where it stopped
    assert latest_checkpoint(tmp_path / "split" / "checkpoints").name == "step-000003"
    second = build_run(config(tmp_path, "split"))
    run_onpolicy(second, resume=True)
    assert second.step == 6

    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = build_run(config(tmp_path, "fresh")).model.state_dict()
    assert not all(torch.equal(a[k], init[k]) for k in a)  # training did move the weights
    # keep=2: only the newest two checkpoints stay
    assert [p.name for p in list_checkpoints(tmp_path / "split" / "checkpoints")] == ["step-000004", "step-000006"]
