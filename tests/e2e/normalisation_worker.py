"""One rank of the token-normalisation test (test_normalisation_across_processes.py).

Usage: normalisation_worker.py OUT. Each rank takes its half of a fixed batch (rank 0: long
completions, rank 1: short ones), runs one update of each objective under DDP with a zero
learning rate, and writes the averaged gradient it ends with to OUT/rank{N}-{objective}.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mopd.config.schema import DistributedConfig
from mopd.distributed.runtime import Accelerated
from mopd.training.update import update_step
from normalisation_case import OBJECTIVES, fixed_batch, student


def main(out: str) -> None:
    dist = Accelerated.from_config(DistributedConfig(device="cpu"))
    for name, make in OBJECTIVES.items():
        batch, signals = fixed_batch(name)
        rows = list(range(2 * dist.rank, 2 * dist.rank + 2))
        mine = batch.select(rows)
        mine_signals = {k: (v[rows][:, : mine.input_ids.shape[1]] if v.dim() > 1 else v[rows])
                        for k, v in signals.items()}
        model = student()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        model, opt, sched = dist.prepare(model, opt, sched)
        update_step(model, opt, sched, mine, mine_signals, make(), 1, None, 1.0, dist)
        grads = {n: p.grad.clone() for n, p in dist.unwrap(model).named_parameters()}
        torch.save(grads, Path(out) / f"rank{dist.rank}-{name}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
