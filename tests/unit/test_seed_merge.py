"""Merging seeds: mean and standard deviation over seeds against a hand computation, the
evaluation's standard error, and the sequences to reach 0.9 (None when never reached)."""

from __future__ import annotations

import math

import pytest

from mopd.eval.seeds import eval_se, mean_std, merge_seeds, sequences_to_reach


def scores(**kw) -> dict:
    return {d: {"greedy": v, "pass_at_1": v} for d, v in kw.items()}


def seed_report(sft, top, final, curve) -> dict:
    """Two domains a, b; `top` is each teacher's score on its own domain (0.1 on the other)."""
    return {
        "sft": {"name": "SFT init", "scores": scores(a=sft[0], b=sft[1])},
        "teachers": {"a": {"scores": scores(a=top[0], b=0.1)}, "b": {"scores": scores(a=0.1, b=top[1])}},
        "methods": [{"name": "MOPD", "scores": scores(a=final[0], b=final[1]), "sequences": 300, "seconds": 1.0,
                     "curve": [[x, scores(a=p[0], b=p[1])] for x, p in curve]}],
        "eval_prompts": {"a": 100, "b": 100},
    }


def test_mean_and_std_over_seeds_match_a_hand_computation():
    reports = [
        # normalised finals: a (0.6-0.2)/(0.6-0.2)=1.0, b (0.5-0.4)/(0.8-0.4)=0.25
        seed_report((0.2, 0.4), (0.6, 0.8), (0.6, 0.5), [(100, (0.2, 0.4)), (200, (0.6, 0.5))]),
        # a (0.35-0.1)/(0.6-0.1)=0.5, b (0.7-0.3)/(0.8-0.3)=0.8
        seed_report((0.1, 0.3), (0.6, 0.8), (0.35, 0.7), [(100, (0.1, 0.3)), (200, (0.35, 0.7))]),
    ]
    row = merge_seeds(reports)["rows"][0]
    a, b = row["normalised"]["a"], row["normalised"]["b"]
    assert a["mean"] == pytest.approx(0.75) and a["std"] == pytest.approx(math.sqrt(0.125))
    assert b["mean"] == pytest.approx(0.525) and b["std"] == pytest.approx(math.sqrt(2 * 0.275 ** 2))
    # the mean over domains, per seed (0.625, 0.65), then over seeds
    assert row["mean"]["mean"] == pytest.approx(0.6375)
    assert row["mean"]["std"] == pytest.approx(math.sqrt(2 * 0.0125 ** 2))
    assert row["raw"]["a"]["mean"] == pytest.approx(0.475)
    # the evaluation's standard error: sqrt(p(1-p)/n), then divided by the teacher's gain
    se_seed1 = math.sqrt(0.6 * 0.4 / 100) / 0.4
    se_seed2 = math.sqrt(0.35 * 0.65 / 100) / 0.5
    assert a["se"] == pytest.approx((se_seed1 + se_seed2) / 2)


def test_one_seed_has_no_std():
    assert mean_std([0.4]) == {"mean": 0.4, "std": None, "n": 1}
    assert eval_se(0.5, 100) == pytest.approx(0.05)


def test_sequences_to_reach_is_the_first_point_at_the_level_on_every_domain():
    curve = [(300, {"a": 0.95, "b": 0.92}), (100, {"a": 0.95, "b": 0.5}), (200, {"a": 0.91, "b": 0.9})]
    assert sequences_to_reach(curve) == 200  # points are read in order of sequences
    assert sequences_to_reach([(100, {"a": 0.95, "b": 0.89}), (200, {"a": 1.2, "b": 0.2})]) is None
    assert sequences_to_reach([(100, {"a": float("nan"), "b": 1.0})]) is None


def test_merged_sequences_to_reach_is_null_unless_every_seed_reaches():
    reached = seed_report((0.2, 0.4), (0.6, 0.8), (0.6, 0.8), [(100, (0.6, 0.8))])
    never = seed_report((0.2, 0.4), (0.6, 0.8), (0.3, 0.5), [(100, (0.3, 0.5))])
    both = merge_seeds([reached, reached])["rows"][0]["sequences_to_0.9"]
    assert both == {"per_seed": [100, 100], "mean": 100}
    one = merge_seeds([reached, never])["rows"][0]["sequences_to_0.9"]
    assert one == {"per_seed": [100, None], "mean": None}
