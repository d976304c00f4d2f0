"""A LoRA student under DDP: two CPU processes (gloo) started by `accelerate launch` end with
one adapter, trained, with a 'self' teacher (the base, adapter off) on one domain, and a run
resumed from the adapter checkpoint ends where the straight run ends."""

from __future__ import annotations

import json
from pathlib import Path

from cli_runs import launch_two_cpu_processes
from test_two_processes import write_config

WORKER = Path(__file__).with_name("distributed_worker.py")


def test_two_cpu_processes_train_one_adapter(tmp_path):
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    config = write_config(tmp_path, lr=1e-2, lora=lora)  # the DDP test's run, with an adapter
    done = launch_two_cpu_processes([str(WORKER), str(config), str(tmp_path / "out")], timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["wrapper"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert ranks[0]["straight"] == ranks[1]["straight"] != ranks[0]["initial"]  # one adapter, and it trained
    assert ranks[0]["resumed"] == ranks[0]["straight"] == ranks[1]["resumed"]  # resumed from the adapter
    ckpt = tmp_path / "out" / "straight" / "checkpoints" / "step-000003"
    assert (ckpt / "adapter_model.safetensors").is_file()
