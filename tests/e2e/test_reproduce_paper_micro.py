"""The paper preset: it validates with its three domains (one agentic), every variant and round
2; a micro-sized version runs end to end; two of its seeds merge into one report."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mopd.cli import app
from mopd.domains.registry import build_domain
from mopd.envs.base import episode_source
from mopd.pipeline.presets import PRESETS
from mopd.pipeline.methods import mopd_budget
from mopd.pipeline.variants import variant_config


def test_paper_preset_validates_with_three_domains_one_agentic_and_equal_budgets():
    cfg = PRESETS["paper"]()
    assert [d.name for d in cfg.domains] == ["reversal", "sorting", "lookup"]
    agentic = [d.name for d in cfg.domains if episode_source(build_domain(d.name, d.builtin, d.params)
                                                             .train_examples()[0]) is not None]
    assert agentic == ["lookup"]
    assert cfg.rounds == 2 and {v.name for v in cfg.variants} == {"alpha", "topk", "tokens", "gap"}
    budget = mopd_budget(cfg)
    for v in cfg.variants:  # every variant samples what plain MOPD samples
        assert mopd_budget(variant_config(cfg, v)) == budget, v.name
    assert variant_config(cfg, cfg.variants[0]).algorithm.alpha > 0
    rl = cfg.baseline_rl
    assert budget % rl.sequences_per_step == 0  # Mix-RL gets exactly MOPD's budget


@pytest.mark.slow
def test_paper_micro_runs_end_to_end_and_two_seeds_merge(tmp_path):
    runner = CliRunner()
    dirs = []
    # seed 0: every stage, round and variant; seed 1: MOPD and Mix-RL only (rows missing from a seed
    # are merged over the seeds that have them)
    for seed, extra in ((0, []), (1, ["--set", "rounds=1", "--set", "variants=[]", "--set", "baselines=[mix_rl]"])):
        out = tmp_path / f"seed{seed}"
        res = runner.invoke(app, ["reproduce", "--preset", "paper-micro", "--set", f"seed={seed}", *extra,
                                  "--output-dir", str(out)])
        assert res.exit_code == 0, res.output
        dirs.append(str(out))
    rows = {r["method"] for r in json.loads((tmp_path / "seed0" / "report.json").read_text())["rows"]}
    assert {"MOPD", "MOPD (round 2)", "MOPD (alpha)", "MOPD (topk)", "MOPD (tokens)", "MOPD (gap)", "Mix-RL",
            "Cascade RL", "Off-Policy FT"} <= rows
    merged_dir = tmp_path / "merged"
    res = runner.invoke(app, ["report", *dirs, "--out", str(merged_dir)])
    assert res.exit_code == 0, res.output
    merged = json.loads((merged_dir / "report.json").read_text())
    assert merged["seeds"] == 2
    mopd = next(r for r in merged["rows"] if r["method"] == "MOPD")
    assert set(mopd["normalised"]) == {"reversal", "sorting", "lookup"}
    assert {"mean", "std", "se", "n"} <= set(mopd["normalised"]["lookup"])
    assert "sequences_to_0.9" in mopd and len(mopd["sequences_to_0.9"]["per_seed"]) == 2
    distances = set(merged["weight_distance"])
    assert {"SFT init", "teacher reversal", "teacher sorting", "teacher lookup", "MOPD"} <= distances
    seeds_of = {r["method"]: r["seeds"] for r in merged["rows"]}
    assert seeds_of["MOPD"] == 2 and seeds_of["Mix-RL"] == 2 and seeds_of["MOPD (round 2)"] == 1
    assert (merged_dir / "report.png").stat().st_size > 10_000
