import math

import pytest
import torch

from mopd.algorithms.grpo import dynamic_sampling_keep, group_advantages


def ref_advantages(rewards, group_ids, eps=1e-6, scale_by_std=True):
    """Slow, obvious reference: a python loop over groups, population std."""
    r, g = rewards.tolist(), group_ids.tolist()
    out = [0.0] * len(r)
    for gid in set(g):
        idx = [i for i, x in enumerate(g) if x == gid]
        vals = [r[i] for i in idx]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        for i in idx:
            out[i] = (r[i] - mean) / (std + eps) if scale_by_std else r[i] - mean
    return torch.tensor(out, dtype=torch.float64)


def ref_keep(rewards, group_ids):
    r, g = rewards.tolist(), group_ids.tolist()
    varied = {gid: len({r[i] for i in range(len(r)) if g[i] == gid}) > 1 for gid in set(g)}
    return torch.tensor([varied[x] for x in g])


def random_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = [1, 4, 3, 5, 2, 4]  # includes a group of one
    labels = torch.randperm(1000, generator=gen)[: len(sizes)]  # arbitrary, non-contiguous ids
    ids = torch.cat([torch.full((s,), int(l)) for s, l in zip(sizes, labels)])
    rewards = torch.randint(0, 2, (len(ids),), generator=gen).float()
    rewards[1:5] = 1.0  # group of 4 with all-equal rewards
    rewards[5:8] = torch.rand(3, generator=gen)  # continuous rewards too
    perm = torch.randperm(len(ids), generator=gen)  # groups interleaved, not contiguous
    return rewards[perm], ids[perm]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_match_reference(seed, scale_by_std):
    rewards, ids = random_batch(seed)
    got = group_advantages(rewards, ids, scale_by_std=scale_by_std)
    assert got.dtype == rewards.dtype
    torch.testing.assert_close(got.double(), ref_advantages(rewards, ids, scale_by_std=scale_by_std), atol=1e-5, rtol=1e-5)


def test_group_advantages_hand_values():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0, 2.0, 2.0])
    ids = torch.tensor([7, 7, 7, 7, 3, 9, 9])
    adv = group_advantages(rewards, ids, eps=0.0 + 1e-12)
    # group 7: mean .5, population std .5 -> +-1; group 3 (size 1) and group 9 (all equal) -> 0
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.0]))


def test_group_advantages_rejects_bad_shapes():
    with pytest.raises(ValueError, match="equal length"):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        group_advantages(torch.zeros(3), torch.zeros(3))


def test_empty_inputs():
    assert group_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.int64)).numel() == 0
    assert dynamic_sampling_keep(torch.zeros(0), torch.zeros(0, dtype=torch.int64)).numel() == 0


@pytest.mark.parametrize("seed", range(5))
def test_dynamic_sampling_matches_reference(seed):
    rewards, ids = random_batch(seed)
    keep = dynamic_sampling_keep(rewards, ids)
    assert keep.dtype == torch.bool
    assert torch.equal(keep, ref_keep(rewards, ids))


def test_dynamic_sampling_hand_values():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.0, 0.0])
    ids = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    keep = dynamic_sampling_keep(rewards, ids)
    assert keep.tolist() == [False, False, True, True, False, False, False]
