"""The arithmetic of the benchmark matrix: FLOPs per completion token against a hand count for a
tiny config, the share of the limit, the cells, the setups per CPU, the time estimate, the table."""

from pathlib import Path

import pytest
import torch
from bench_scripts import load_scripts

BENCH = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def mods():
    yield from load_scripts("bench_matrix", "limits")


# hidden 8, 2 layers, 2 heads of 4, 1 KV head, MLP 16, vocabulary 10
TINY = {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 16, "vocab_size": 10}


def test_matmul_weights_by_hand(mods):
    _, limits = mods
    # per layer: q 8x8 = 64, k and v 8x4 = 32 each, o 64, MLP 3 x 8 x 16 = 384 -> 576; x 2 layers
    # = 1152; head 8 x 10 = 80
    assert limits.matmul_weights(TINY) == 1152 + 80


def test_flops_per_token_by_hand(mods):
    _, limits = mods
    context = limits.mean_context(prompt_tokens=5, completion_tokens=6)  # 5 + 7/2
    assert context == 8.5
    attn = 2 * 4 * 2 * 4 * 8.5  # layers x 4 x heads x head_dim x context = 544
    fwd = 2 * 1232 + attn  # 3008
    f = limits.flops_per_token(TINY, context)
    assert f["generation"] == pytest.approx(fwd)
    assert f["teacher"] == pytest.approx(fwd)  # the student is its own teacher's shape
    assert f["student"] == pytest.approx(3 * fwd)
    assert f["total"] == pytest.approx(5 * fwd) == pytest.approx(15040)


def test_a_bigger_teacher_costs_its_own_forward(mods):
    _, limits = mods
    big = {**TINY, "num_hidden_layers": 4}
    f = limits.flops_per_token(TINY, 1.0, teacher=big)
    assert f["teacher"] == pytest.approx(2 * (4 * 576 + 80) + 4 * 4 * 2 * 4 * 1.0)
    assert f["total"] == pytest.approx(f["generation"] + f["teacher"] + f["student"])


def test_smollm2_135m_costs_about_1_35_gflop_a_token(mods):
    _, limits = mods
    smollm2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
               "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152}
    assert limits.matmul_weights(smollm2) == 134_479_872
    assert limits.flops_per_token(smollm2, 0.0)["total"] == pytest.approx(10 * 134_479_872)


def test_share_of_limit(mods):
    _, limits = mods
    s = limits.share_of_limit(tokens_per_s=50.0, flops_per_tok=2e9, peak_flops_per_s=4e11)
    assert s["achieved_flops_per_s"] == 1e11 and s["share"] == pytest.approx(0.25)


def test_gemm_rate_is_a_positive_rate_and_keeps_the_thread_count(mods):
    _, limits = mods
    before = torch.get_num_threads()
    assert limits.gemm_rate(torch.float32, 1, n=64, reps=1) > 0
    assert torch.get_num_threads() == before


def test_cells(mods):
    m, _ = mods
    assert m.parse_cell("64x256") == (64, 1, 256) and m.parse_cell("16x8x32") == (16, 8, 32)
    assert m.cell_name((16, 8, 32)) == "16x8x32" and m.cell_name((8, 1, 32)) == "8x32"
    with pytest.raises(ValueError):
        m.parse_cell("8")
    args = m.parse_args(["--cells", "64x32,8x32,16x8x32"])
    assert args.cells == [(8, 1, 32), (64, 1, 32), (16, 8, 32)]  # smallest first
    assert len(m.parse_args([]).cells) == 12


def test_setups_follow_the_cpu(mods):
    m, _ = mods
    assert m.setups_for(True) == {"fast": "mopd-vllm-bf16w-ahead", "onpolicy": "mopd-vllm-bf16w",
                                  "trl": ["trl", "trl-bf16"]}
    assert m.setups_for(False) == {"fast": "mopd-vllm-ahead", "onpolicy": "mopd-vllm", "trl": ["trl"]}
    assert m.setup_peak("mopd-vllm-bf16w-ahead", {"float32": 1, "float32-ahead": 2, "bfloat16": 3,
                                                  "bfloat16-ahead": 6}) == 6
    assert m.setup_peak("trl", {"float32": 1, "float32-ahead": 2}) == 1


def summary(tokens, step_s, steps=2, cpu_s=None):
    return {"completion_tokens": tokens * steps, "measured_steps": steps, "median_step_s": step_s,
            "tokens_per_s": tokens / step_s, "tokens_per_cpu_s": tokens / (cpu_s or step_s)}


def test_estimate_scales_the_largest_cell_by_tokens(mods):
    m, _ = mods
    assert m.estimate_s([], 8, 32, 1, 2) is None
    # two setups: 256 tokens in 4 s and 256 tokens in 8 s a step -> 3/64 s a token; 3 steps each
    # = 36 s of stepping in a 100 s cell -> 64 s fixed
    res = {"wall_s": 100.0, "results": {"a": summary(256, 4.0), "b": summary(256, 8.0)}}
    model = m.cost_model(res, 8, 32, warmup=1, steps=2)
    assert model["s_per_token"] == pytest.approx(12 / 256) and model["fixed_s"] == pytest.approx(64.0)
    assert m.estimate_s([model], 64, 32, 1, 2) == pytest.approx(64 + 3 * 12 / 256 * 64 * 32)


def test_table_rows_ratio_against_trls_headline(mods):
    m, _ = mods
    res = {"mopd-vllm-bf16w-ahead": {**summary(300, 3.0), "limit": {"share": 0.1}},
           "mopd-vllm-bf16w": {**summary(300, 4.0), "limit": {"share": 0.075}},
           "trl": {**summary(200, 10.0), "weights_moved": 0.99},
           "trl-bf16": {**summary(200, 8.0, cpu_s=4.0), "weights_moved": 0.99}}
    rows = m.table_rows({"setups": m.setups_for(True), "cells": {"8x32": {"results": res}}})
    assert rows == [["8x32", 100.0, 75.0, "25.00 (trl-bf16)", "4.00x", "3.00x", "2.00x", "1.50x", "10.0%", "7.5%"]]
    assert "| 8x32 | 100.00 | 75.00 |" in m.markdown(m.COLUMNS, rows)


def test_table_rows_without_trl(mods):
    m, _ = mods
    res = {"mopd-vllm-ahead": {**summary(300, 3.0), "limit": {"share": 0.1}},
           "mopd-vllm": {**summary(300, 4.0), "limit": {"share": 0.075}}}
    rows = m.table_rows({"setups": m.setups_for(False), "cells": {"16x8x32": {"results": res}}})
    assert rows == [["16x8x32", 100.0, 75.0, "-", "-", "-", "-", "-", "10.0%", "7.5%"]]


def test_reuse_reads_a_setups_earlier_results_only_when_asked_and_alike(mods, tmp_path):
    import argparse
    import json

    bench_matrix, _ = mods
    settings = {"steps": 1, "warmup": 1, "threads": 1, "attn": "eager", "vllm_compile": False, "accum": 4}
    path = tmp_path / "matrix-64x256-trl.json"
    path.write_text(json.dumps({"settings": settings, "results": {"trl": {"tokens_per_s": 3.0}}, "wall_s": 9}))
    args = argparse.Namespace(reuse=True, **settings)
    assert bench_matrix.reused(path, args)["results"]["trl"]["tokens_per_s"] == 3.0
    assert bench_matrix.reused(path, argparse.Namespace(**{**vars(args), "reuse": False})) is None
    assert bench_matrix.reused(tmp_path / "missing.json", args) is None
    with pytest.raises(SystemExit, match="accum"):
        bench_matrix.reused(path, argparse.Namespace(**{**vars(args), "accum": 1}))
