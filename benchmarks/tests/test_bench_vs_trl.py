"""The arithmetic of benchmarks/bench_vs_trl.py: which TRL setup the headline ratio is against,
tokens per second over a run, the ratios it writes, and the share of the weights that moved."""

import json

import pytest
import torch
from safetensors.torch import save_file
from bench_scripts import load_scripts


@pytest.fixture(scope="module")
def bench():
    yield from load_scripts("bench_vs_trl")


def step(tokens, wall, cpu, gen=1.0, teacher=0.5, **extra):
    return {"tokens": tokens, "step_s": wall, "cpu_s": cpu, "generation_s": gen, "teacher_s": teacher, **extra}


def run_of(steps, moved):
    return {"steps": steps, "ready": {"rss_after_load_mib": 100.0}, "done": {"peak_rss_mib": 200.0,
                                                                             "weights_moved": moved}}


def test_headline_is_the_fastest_trl_setup_that_moved_half_the_weights(bench):
    trl = {"trl": {"tokens_per_s": 20.0, "weights_moved": 0.999},
           "trl-bf16w": {"tokens_per_s": 30.0, "weights_moved": 0.004},
           "trl-vllm-reload": {"tokens_per_s": 19.0, "weights_moved": 0.999}}
    assert bench.headline_trl(trl) == "trl"
    trl["trl-vllm-reload"]["tokens_per_s"] = 25.0
    assert bench.headline_trl(trl) == "trl-vllm-reload"  # a faster one that trains takes over
    trl["trl-bf16w"]["weights_moved"] = 0.5
    assert bench.headline_trl(trl) == "trl-bf16w"  # half moved is enough


def test_headline_falls_back_to_the_fastest_when_none_trains(bench):
    trl = {"trl-bf16w": {"tokens_per_s": 30.0, "weights_moved": 0.004},
           "trl-bf16": {"tokens_per_s": 21.0, "weights_moved": 0.1}}
    assert bench.headline_trl(trl) == "trl-bf16w"
    assert bench.headline_trl({}) is None


def test_summary_divides_total_tokens_by_total_time_and_fills_trls_update_time(bench):
    # Per-step rates would average to (100/2 + 300/2) / 2 = 100 tok/s; the run's rate is 400 / 4.
    s = bench.summarise("TRL", run_of([step(100, 2.0, 4.0), step(300, 2.0, 3.0)], 0.9))
    assert s["tokens_per_s"] == pytest.approx(100.0)
    assert s["tokens_per_cpu_s"] == pytest.approx(400 / 7)
    assert s["median_update_s"] == pytest.approx(0.5)  # 2.0 - 1.0 generation - 0.5 teacher
    assert s["weights_moved"] == 0.9 and s["peak_rss_mib"] == 200.0
    mopd = bench.summarise("mopd", run_of([step(100, 2.0, 4.0, update_s=1.7)], 0.99))
    assert mopd["median_update_s"] == pytest.approx(1.7)  # mopd measures its own


def test_report_writes_ratios_against_the_headline_and_every_trl_setup(bench, tmp_path, capsys):
    args = bench.parse_args(["--setups", "mopd-vllm-bf16w-ahead,trl,trl-bf16w", "--steps", "2",
                             "--out", str(tmp_path / "r.json")])
    summary = {"mopd-vllm-bf16w-ahead": bench.summarise("m", run_of([step(300, 3.0, 6.0, update_s=3.0)] * 2, 0.99)),
               "trl": bench.summarise("t", run_of([step(200, 10.0, 20.0)] * 2, 0.99)),
               "trl-bf16w": bench.summarise("w", run_of([step(200, 8.0, 16.0)] * 2, 0.004))}
    out = bench.report(args, summary, wall=60.0)
    saved = json.loads((tmp_path / "r.json").read_text())
    ratio = saved["ratios"]["mopd-vllm-bf16w-ahead"]
    assert ratio["vs"] == "trl" and out["ratios"] == saved["ratios"]
    assert ratio["tokens_per_s"] == pytest.approx((300 / 3) / (200 / 10))
    every = saved["ratios_vs_each_trl_setup"]["mopd-vllm-bf16w-ahead"]
    assert every["trl-bf16w"]["tokens_per_s"] == pytest.approx((300 / 3) / (200 / 8))
    assert every["trl-bf16w"]["tokens_per_cpu_s"] == pytest.approx((300 / 6) / (200 / 16))
    assert "(the headline)" in capsys.readouterr().out


def test_weights_moved_counts_elements_that_left_their_start(bench, tmp_path):
    start = {"a": torch.tensor([0.1234567, 0.5, -0.25, 2.0]), "b": torch.full((2, 3), 0.0201)}
    save_file(start, str(tmp_path / "model.safetensors"))
    a, b = start["a"].clone(), start["b"].clone()
    assert bench.weights_moved([("a", a, torch.float32), ("b", b, torch.float32)], str(tmp_path)) == 0.0
    a[0] += 1e-7  # any change counts, however small
    b[1, 2] = -1.0
    assert bench.weights_moved([("a", a, torch.float32), ("b", b, torch.float32)], str(tmp_path)) == pytest.approx(2 / 10)


def test_weights_moved_compares_master_copies_with_the_16_bit_weights_they_started_from(bench, tmp_path):
    # A bf16 student's float32 masters start at the bf16 rounding of the checkpoint's values, not
    # at those values: unchanged masters have not moved.
    start = {"w": torch.tensor([0.1234567, 0.0201, -3.3333333])}
    save_file(start, str(tmp_path / "model.safetensors"))
    masters = start["w"].to(torch.bfloat16).float()
    assert not torch.equal(masters, start["w"])  # the rounding is real
    assert bench.weights_moved([("w", masters, torch.bfloat16)], str(tmp_path)) == 0.0
    masters[1] += 1e-6  # below bf16's step near 0.02, but a float32 master keeps it
    assert bench.weights_moved([("w", masters, torch.bfloat16)], str(tmp_path)) == pytest.approx(1 / 3)
