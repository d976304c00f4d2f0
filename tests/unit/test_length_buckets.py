"""Micro-batches of rows of similar length: every row once, within the row and token limits,
and a teacher scoring in such micro-batches gives each row what it gives that row alone."""

import random

import pytest
import torch

from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.rollout.types import Rollout, collate
from mopd.teachers.hf_teacher import HFTeacher


def batch_of(lengths: list[int], seed: int = 0):
    rng = random.Random(seed)
    rollouts = [Rollout.from_completion("d", [rng.randrange(5, 30) for _ in range(3)],
                                        [rng.randrange(5, 30) for _ in range(n)], [-1.0] * n) for n in lengths]
    return rollouts, collate(rollouts, pad_id=0)


@pytest.mark.parametrize("max_rows, max_tokens", [(3, None), (4, 40), (64, 25), (2, 1)])
def test_every_row_once_within_the_limits_shortest_first(max_rows, max_tokens):
    lengths = [random.Random(s).randrange(1, 20) for s in range(23)]
    _, batch = batch_of(lengths)
    groups = batch.length_buckets(max_rows, max_tokens)
    rows = [i for g in groups for i in g.tolist()]
    assert sorted(rows) == list(range(23))
    real = batch.attention_mask.sum(-1)
    assert [int(real[i]) for i in rows] == sorted(int(n) for n in real)  # shortest first, across groups
    for g in groups:
        assert 1 <= len(g) <= max_rows
        padded = len(g) * int(real[g].max())
        assert len(g) == 1 or max_tokens is None or padded <= max_tokens
    if max_tokens is None:  # rows alone limit the groups: all but the last are full
        assert all(len(g) == max_rows for g in groups[:-1])


@pytest.mark.parametrize("topk", [0, 3])
def test_teacher_scores_in_buckets_equal_each_row_scored_alone(topk):
    tok = char_tokenizer()
    teacher = HFTeacher("t", tiny_model(tok, seed=3), micro_batch_size=3, micro_batch_tokens=30)
    rollouts, batch = batch_of([2, 17, 5, 9, 1, 12, 4, 15])
    scores = teacher.score(batch, topk=topk)
    for i, r in enumerate(rollouts):
        alone = HFTeacher("t", teacher.model).score(collate([r], pad_id=0), topk=topk)
        n = len(r.token_ids)
        torch.testing.assert_close(scores.logprobs[i, :n], alone.logprobs[0], atol=1e-5, rtol=1e-5)
        assert (scores.logprobs[i, n:] == 0).all()
        if topk:
            assert torch.equal(scores.topk_ids[i, :n], alone.topk_ids[0])
            torch.testing.assert_close(scores.topk_logprobs[i, :n], alone.topk_logprobs[0], atol=1e-5, rtol=1e-5)


def test_every_rank_runs_as_many_micro_batches():
    from mopd.training.update import micro_batches

    class OtherRankHasSeven:
        def all_max(self, n):
            return max(n, 7)

    _, batch = batch_of([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    assert len(micro_batches(batch, 2)) == 2
    parts = micro_batches(batch, 2, dist=OtherRankHasSeven())
    assert len(parts) == 7 and sorted(i for p in parts for i in p.tolist()) == list(range(10))
    assert len(micro_batches(batch, 1, max_tokens=12, dist=OtherRankHasSeven())) >= 7


@pytest.mark.parametrize("accum, tokens", [(1, 10**9), (3, 10**9), (1, 25), (2, 40)])
def test_the_update_gradient_does_not_depend_on_the_grouping(accum, tokens):
    from mopd.config.schema import AlgorithmConfig
    from mopd.objectives.mopd import MOPDObjective
    from mopd.training.update import update_step

    tok = char_tokenizer()
    model = tiny_model(tok, seed=4)
    _, batch = batch_of([2, 17, 5, 9, 1, 12, 4, 15], seed=1)
    g = torch.Generator().manual_seed(0)
    signals = {"lp_teacher": -torch.rand(batch.input_ids.shape, generator=g) * batch.gen_mask}
    objective = MOPDObjective(None, AlgorithmConfig(is_correction=None))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

    def grads(a, n):
        scalars, _ = update_step(model, opt, sched, batch, signals, objective, a, None, micro_batch_tokens=n)
        return scalars["loss"], [p.grad.clone() for p in model.parameters()]

    loss_whole, whole = grads(1, 10**9)
    loss, grouped = grads(accum, tokens)
    assert loss == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    for a, b in zip(whole, grouped):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
