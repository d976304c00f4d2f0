"""Adaptive domain mixtures (sampling.mixture): token-balanced and gap-driven shares, logged,
checkpointed, and a resumed run draws what the straight run drew."""

from __future__ import annotations

import pytest
import torch

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.data.adaptive import MixtureAdapter
from mopd.data.mixture import MixtureSampler
from mopd.domains.base import Example
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.training.loop import run_onpolicy


def sampler(seed=0):
    ex = {d: [Example(domain=d, prompt=f"{d}{i}") for i in range(50)] for d in ("a", "b")}
    return MixtureSampler(ex, {"a": 1.0, "b": 1.0}, seed=seed)


def test_new_shares_hold_from_the_next_batch_and_survive_a_checkpoint():
    s = sampler()
    s.next_batch(10)  # 5 / 5 so far
    s.set_shares({"a": 3.0, "b": 1.0})
    batch = s.next_batch(8)
    assert [e.domain for e in batch].count("a") == 6  # counted from the change, not from the start
    resumed = sampler()
    resumed.load_state_dict(s.state_dict())
    assert [e.prompt for e in resumed.next_batch(8)] == [e.prompt for e in s.next_batch(8)]


def test_token_balanced_shares_divide_by_measured_length():
    ad = MixtureAdapter("tokens", every=1, base={"long": 1.0, "short": 1.0}, min_share=0.0)
    assert ad.weights() is None  # nothing measured yet
    ad.observe({"length/long": 40.0, "length/short": 4.0})
    w = ad.weights()
    assert w["short"] == pytest.approx(10 * w["long"]) and sum(w.values()) == pytest.approx(1.0)
    # Equal trained tokens: share x length is the same for both domains.
    assert w["short"] * 4.0 == pytest.approx(w["long"] * 40.0)


def test_gap_shares_follow_the_reverse_kl_with_a_floor():
    ad = MixtureAdapter("gap", every=1, base={"far": 1.0, "near": 1.0}, min_share=0.1)
    ad.observe({"reverse_kl/far": 0.9, "reverse_kl/near": 0.0})
    w = ad.weights()
    assert w["near"] == pytest.approx(0.1, abs=1e-5) and w["far"] == pytest.approx(0.9, abs=1e-5)
    ad.observe({"reverse_kl/far": 0.0})  # an EMA: one step moves it part of the way
    assert 0.0 < ad.ema["far"] < 0.9


def test_adaptive_mixture_with_ahead_is_refused():
    from mopd.config.schema import RunConfig

    run = {"student": {"tiny": {}}, "teachers": [{"name": "t", "kind": "self"}], "rollout": {"engine": "vllm"},
           "domains": [{"name": "d", "prompts": {"builtin": "reversal"}, "teacher": "t"}]}
    with pytest.raises(ValueError, match="sampling.ahead: 0"):
        RunConfig.model_validate({**run, "sampling": {"ahead": 1, "mixture": {"mode": "tokens"}}})
    RunConfig.model_validate({**run, "sampling": {"ahead": 1}})  # fixed shares: fine


def config(tmp_path, out):
    teacher = tmp_path / "teacher"
    if not teacher.exists():
        tok = char_tokenizer()
        save_pretrained(tiny_model(tok, seed=11), tok, teacher)
    params = {"n_train": 30, "n_eval": 5}
    return load_config(None, RunConfig, data={
        "output_dir": str(tmp_path / out), "seed": 3, "student": {"tiny": {"seed": 1}},
        "teachers": [{"name": "t", "model": {"path": str(teacher)}}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": params}, "teacher": "t"},
                    {"name": "add", "prompts": {"builtin": "addition", "params": params}, "teacher": "t"}],
        "sampling": {"prompts_per_step": 6, "max_new_tokens": 6, "mixture": {"mode": "gap", "every": 1}},
        "optim": {"steps": 4, "lr": 1e-3},
        "checkpoint": {"every": 2, "keep": 2},
        "logging": {"progress": False},
    })


def test_a_run_logs_its_shares_and_resumes_exactly(tmp_path):
    straight = build_run(config(tmp_path, "straight"))
    last = run_onpolicy(straight)
    shares = {k: v for k, v in last.items() if k.startswith("mixture_weight/")}
    assert set(shares) == {"mixture_weight/rev", "mixture_weight/add"}
    assert sum(shares.values()) == pytest.approx(1.0) and shares["mixture_weight/rev"] != pytest.approx(0.5)
    first = build_run(config(tmp_path, "split"))
    run_onpolicy(first, stop_at=3)
    second = build_run(config(tmp_path, "split"))
    run_onpolicy(second, resume=True)
    assert second.sampler.shares == straight.sampler.shares
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
