"""The pure helpers of benchmarks/bench_vllm_lora.py: the rank vLLM is started with, the
comparison of two engines' completions, and the adapter nudge that stands in for an update."""


import pytest
import torch
from bench_scripts import load_scripts


@pytest.fixture(scope="module")
def bench():
    yield from load_scripts("bench_vllm_lora")


@pytest.mark.parametrize("r, expected", [(1, 1), (2, 8), (8, 8), (9, 16), (16, 16), (17, 32), (300, 320), (512, 512)])
def test_max_lora_rank_is_the_smallest_vllm_value_that_holds_the_adapter(bench, r, expected):
    assert bench.vllm_max_lora_rank(r) == expected


def test_max_lora_rank_above_vllms_largest_is_refused(bench):
    with pytest.raises(ValueError, match="513"):
        bench.vllm_max_lora_rank(513)


def test_identical_completions(bench):
    rows = [([1, 2, 3], [-0.1, -0.2, -0.3]), ([4], [-1.0])]
    assert bench.compare_completions(rows, rows) == {"rows": 2, "identical_rows": 2, "shared_prefix_share": 1.0,
                                                     "max_logprob_diff": 0.0}


def test_logprob_difference_counts_only_the_shared_prefix(bench):
    a = [([1, 2, 3, 4], [-0.1, -0.2, -0.3, -0.4]), ([5, 6], [-1.0, -2.0])]
    # Row 0 agrees on 2 tokens then differs (the log-probs after that are of other tokens, not compared);
    # row 1 is one token longer in b.
    b = [([1, 2, 9, 9], [-0.1, -0.25, -5.0, -5.0]), ([5, 6, 7], [-1.0, -2.0, -3.0])]
    out = bench.compare_completions(a, b)
    assert out["rows"] == 2 and out["identical_rows"] == 0
    assert out["shared_prefix_share"] == pytest.approx((2 + 2) / (4 + 3))
    assert out["max_logprob_diff"] == pytest.approx(0.05)


def test_rows_that_differ_at_once_add_no_logprob_difference(bench):
    out = bench.compare_completions([([1], [-0.5])], [([2], [-9.0])])
    assert out == {"rows": 1, "identical_rows": 0, "shared_prefix_share": 0.0, "max_logprob_diff": 0.0}


def test_empty_completions_agree(bench):
    out = bench.compare_completions([([], [])], [([], [])])
    assert out["identical_rows"] == 1 and out["shared_prefix_share"] == 1.0


def test_different_numbers_of_rows_are_refused(bench):
    with pytest.raises(ValueError):
        bench.compare_completions([([1], [0.0])], [])


def test_nudge_moves_only_the_adapter_and_is_reproducible(bench):
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3, 3))
            self.lora_A = torch.nn.Linear(3, 2, bias=False)
            self.lora_B = torch.nn.Linear(2, 3, bias=False)

    torch.manual_seed(0)
    m1 = Layer()
    m2 = Layer()
    m2.load_state_dict(m1.state_dict())
    before = {k: v.clone() for k, v in m1.state_dict().items()}
    bench.nudge_adapter(m1, step=3)
    bench.nudge_adapter(m2, step=3)
    after = m1.state_dict()
    assert torch.equal(after["weight"], before["weight"])
    assert not torch.equal(after["lora_A.weight"], before["lora_A.weight"])
    assert not torch.equal(after["lora_B.weight"], before["lora_B.weight"])
    for k in after:
        assert torch.equal(after[k], m2.state_dict()[k])
