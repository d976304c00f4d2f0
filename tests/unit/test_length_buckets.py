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
