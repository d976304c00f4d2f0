"""Token normalisation across processes: N ranks give the gradient of one process on the whole batch.

Each rank divides its loss by the token count over all ranks (divided by N, since DDP averages
gradients), not by its own: with ranks of unequal completion lengths a rank's own count would
weigh its tokens 6x or 0.5x. Checked for MOPD's token and sequence normalisation and GRPO's
kept-token normalisation, against a single process on the whole batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cli_runs import launch_two_cpu_processes
from mopd.training.update import update_step

sys.path.insert(0, str(Path(__file__).parent))
from normalisation_case import OBJECTIVES, fixed_batch, student  # noqa: E402

WORKER = Path(__file__).with_name("normalisation_worker.py")


def one_process_gradient(name: str) -> dict[str, torch.Tensor]:
    batch, signals = fixed_batch(name)
    model = student()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    update_step(model, opt, sched, batch, signals, OBJECTIVES[name](), 1, None, 1.0)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def two_process_gradients(tmp_path_factory):
    out = tmp_path_factory.mktemp("norm")
    res = launch_two_cpu_processes([str(WORKER), str(out)], timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_two_processes_give_the_gradient_of_one_on_the_whole_batch(two_process_gradients, name):
    ref = one_process_gradient(name)
    for rank in (0, 1):
        got = torch.load(two_process_gradients / f"rank{rank}-{name}.pt")
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=1e-4, msg=f"{name}, rank {rank}, {k}")
