"""NaN / inf in a loss or gradient: the update is skipped, counted and logged; too many in a
row (optim.max_nonfinite_in_a_row) stop the run with an error that says what to change."""

import logging

import pytest
import torch
from cli_runs import read_metrics
from faultkit import run_data, teacher_dir

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.objectives.base import LossOutput
from mopd.training.checkpoint import latest_checkpoint, load_trainer_state
from mopd.training.loop import NonFiniteRun, run_onpolicy


class NaNLossOn:
    """The run's objective, with a NaN loss at the given steps."""

    def __init__(self, run, steps: set[int]):
        self.inner, self.run, self.steps = run.objective, run, steps

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, *args):
        out = self.inner.loss(*args)
        return LossOutput(out.loss * float("nan"), out.token_metrics) if self.run.step in self.steps else out


def build(tmp_path, **optim):
    # An outside teacher: a 'self' teacher equals the student at first, so nothing would move.
    data = run_data(tmp_path / "run", {"model": {"path": str(teacher_dir(tmp_path))}}, steps=5)
    data["optim"].update(optim)
    return build_run(load_config(None, RunConfig, data=data))


def weights(run):
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nan_losses_are_skipped_counted_and_logged(tmp_path, caplog):
    run = build(tmp_path)
    run.objective = NaNLossOn(run, {1, 2})
    run_onpolicy(run, stop_at=1)
    before = weights(run)
    with caplog.at_level(logging.WARNING, "mopd.training.loop"):
        run_onpolicy(run, stop_at=3)
    assert same(before, weights(run))  # both NaN steps left the weights alone
    assert "step 2: skipped a non-finite update (loss nan" in caplog.text and "2 in a row, 2 in all" in caplog.text
    run_onpolicy(run)
    assert run.step == 5 and not same(before, weights(run))  # and training went on afterwards
    assert [m["skipped_nonfinite"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 1, 2, 2, 2]
    assert load_trainer_state(latest_checkpoint(tmp_path / "run" / "checkpoints"))["skipped_nonfinite"] == 2


def test_nonfinite_gradients_in_a_row_stop_the_run(tmp_path):
    run = build(tmp_path, max_nonfinite_in_a_row=2)
    start = weights(run)
    param = next(run.model.parameters())
    param.register_hook(lambda g: g * float("inf"))  # the loss stays finite, one gradient does not
    with pytest.raises(NonFiniteRun) as e:
        run_onpolicy(run)
    msg = str(e.value)
    assert run.step == 1  # failed at the second update in a row
    assert "2 non-finite updates in a row (optim.max_nonfinite_in_a_row=2)" in msg and "grad norm" in msg
    assert "lower optim.lr" in msg
    assert same(start, weights(run))
