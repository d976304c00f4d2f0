"""A LoRA student under DDP: two CPU processes (gloo) started by `accelerate launch` end with
one adapter, trained, with a 'self' teacher (the base, adapter off) on one domain, and a run
resumed from the adapter checkpoint ends where the straight run ends."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cli_runs import launch_two_cpu_processes
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model

WORKER = Path(__file__).with_name("distributed_worker.py")


def test_two_cpu_processes_train_one_adapter(tmp_path):
    tok = char_tokenizer()
    save_pretrained(tiny_model(tok, seed=11), tok, tmp_path / "teacher")
    cfg = {
        "seed": 5,
        "student": {"tiny": {"seed": 1}, "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "teachers": [{"name": "t", "model": {"path": str(tmp_path / "teacher")}}, {"name": "me", "kind": "self"}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": {"n_train": 40, "n_eval": 5}},
                     "teacher": "t"},
                    {"name": "sort", "prompts": {"builtin": "sorting", "params": {"n_train": 40, "n_eval": 5}},
                     "teacher": "me"}],
        "sampling": {"prompts_per_step": 8, "max_new_tokens": 6},
        "optim": {"steps": 3, "lr": 1e-2, "grad_accum_steps": 2},
        "checkpoint": {"every": 1, "keep": 5},
        "logging": {"progress": False},
        "distributed": {"device": "cpu"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    done = launch_two_cpu_processes([str(WORKER), str(tmp_path / "run.yaml"), str(tmp_path / "out")], timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["wrapper"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert ranks[0]["straight"] == ranks[1]["straight"] != ranks[0]["initial"]  # one adapter, and it trained
    assert ranks[0]["resumed"] == ranks[0]["straight"] == ranks[1]["resumed"]  # resumed from the adapter
    ckpt = tmp_path / "out" / "straight" / "checkpoints" / "step-000003"
    assert (ckpt / "adapter_model.safetensors").is_file()
