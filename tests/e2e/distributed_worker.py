"""One rank of the multi-process test (test_two_processes.py), started by `accelerate launch`.

Usage: distributed_worker.py CONFIG OUT. Trains CONFIG straight through, then again in two
parts (stopped after one step, resumed with --resume semantics), and writes what this rank
saw to OUT/rank{N}.json: weight digests (initial, straight, resumed), the prompts it sampled
per step, the wrapper the model was trained in, and digests before / after a short SFT.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import LoggingConfig, OptimConfig, RunConfig
from mopd.domains.registry import build_domain
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.distributed.rank_views import inner_optimizer
from mopd.distributed.runtime import Accelerated
from mopd.training.loop import run_onpolicy
from mopd.training.sft import SFTSettings, run_sft


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if hasattr(tensor, "full_tensor"):  # an FSDP2 shard: digest the whole parameter
            tensor = tensor.full_tensor()
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()


def main(config: str, out: str) -> None:
    cfg = load_config(Path(config), RunConfig)
    out_dir = Path(out)

    straight = build_run(cfg, str(out_dir / "straight"))
    initial = digest(straight.dist.unwrap(straight.model))
    prompts: list[list[str]] = []
    draw = straight.sampler.next_batch

    def recorded(n):
        batch = draw(n)
        prompts.append([ex.prompt for ex in batch])
        return batch

    straight.sampler.next_batch = recorded
    run_onpolicy(straight)

    first = build_run(cfg, str(out_dir / "split"))
    run_onpolicy(first, stop_at=1)
    second = build_run(cfg, str(out_dir / "split"))
    run_onpolicy(second, resume=True)

    d = straight.dist
    (out_dir / f"rank{d.rank}.json").write_text(json.dumps({
        "rank": d.rank, "world": d.world, "wrapper": type(straight.model).__name__,
        "optimizer": type(inner_optimizer(straight.optimizer)).__name__,
        "initial": initial, "straight": digest(d.unwrap(straight.model)),
        "resumed": digest(second.dist.unwrap(second.model)), "steps": [straight.step, second.step],
        "prompts": prompts, "sft": sft(cfg),
    }))


def sft(cfg: RunConfig) -> list[str]:
    """SFT's own loop under the same accelerator: digests before and after three steps."""
    dist = Accelerated.from_config(cfg.distributed)
    tok = char_tokenizer()
    model = tiny_model(tok, seed=4).to(dist.device)
    before = digest(model)
    examples = build_domain("rev", "reversal", {"n_train": 40, "n_eval": 5}).train_examples()
    run_sft(model, tok, examples, OptimConfig(lr=3e-3, steps=3, grad_accum_steps=2), SFTSettings(batch_size=8),
            logging=LoggingConfig(progress=False), dist=dist)
    return [before, digest(model)]


if __name__ == "__main__":
    main(*sys.argv[1:3])
