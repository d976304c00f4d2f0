"""Per-domain metric aggregation and the metric sinks."""

import json
import math

import torch

from mopd.config.schema import LoggingConfig
from mopd.training.metrics import MetricsLogger, per_domain_means, per_domain_row_means


def test_per_domain_means_average_over_generated_tokens_only():
    values = torch.tensor([[9.0, 1.0, 3.0], [9.0, 5.0, 9.0], [9.0, 2.0, 4.0]])
    mask = torch.tensor([[False, True, True], [False, True, False], [False, True, True]])
    out = per_domain_means(values, mask, torch.tensor([0, 1, 0]), ["a", "b"], "kl")
    assert out["kl/a"] == (1 + 3 + 2 + 4) / 4
    assert out["kl/b"] == 5.0
    assert out["kl/all"] == (1 + 3 + 5 + 2 + 4) / 5


def test_row_means_ignore_missing_rewards():
    out = per_domain_row_means(torch.tensor([1.0, float("nan"), 0.0]), torch.tensor([0, 1, 0]), ["a", "b"], "r")
    assert out == {"r/all": 0.5, "r/a": 0.5}


def test_jsonl_and_tensorboard_sinks(tmp_path):
    log = MetricsLogger(tmp_path, LoggingConfig(tensorboard=True))
    log.log(1, {"loss": 0.5, "bad": float("nan")})
    log.log(2, {"loss": 0.25})
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"step": 1, "loss": 0.5, "bad": None} and lines[1]["loss"] == 0.25
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [round(e.value, 3) for e in acc.Scalars("loss")] == [0.5, 0.25]
    assert not math.isnan(acc.Scalars("loss")[0].value)
