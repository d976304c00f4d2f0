"""GRPO outcome advantages and DAPO dynamic sampling, as pure tensor functions.

A group is the set of completions sampled for the same prompt; `group_ids[i]` says which
group completion i belongs to (any int64 labels, not necessarily contiguous or sorted).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must be 1-D of equal length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if group_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")


def group_advantages(
    rewards: Tensor, group_ids: Tensor, eps: float = 1e-6, scale_by_std: bool = True
) -> Tensor:
    """A_i = (r_i - mean_g(r)) / (std_g(r) + eps), g the group of i.

    std is the population std (unbiased=False, divide by the group size): it is defined for a
    group of one (std 0, advantage 0) where the unbiased one is NaN. With scale_by_std=False
    it returns r - mean (Dr. GRPO), which avoids up-weighting near-uniform groups.
    Statistics are computed in float64 and the result is cast back to rewards' dtype.
    """
    _check(rewards, group_ids)
    if rewards.numel() == 0:
        return rewards.clone()
    # Map arbitrary labels to 0..G-1 so index_add can build per-group sums.
    _, inv = torch.unique(group_ids, return_inverse=True)
    g = int(inv.max()) + 1
    r = rewards.to(torch.float64)
    count = torch.zeros(g, dtype=torch.float64, device=r.device).index_add_(0, inv, torch.ones_like(r))
    mean = torch.zeros(g, dtype=torch.float64, device=r.device).index_add_(0, inv, r) / count
    centred = r - mean[inv]
    if not scale_by_std:
        return centred.to(rewards.dtype)
    # Two-pass variance (sum of squared deviations), stabler than E[r^2] - E[r]^2.
    var = torch.zeros(g, dtype=torch.float64, device=r.device).index_add_(0, inv, centred**2) / count
    return (centred / (var.sqrt()[inv] + eps)).to(rewards.dtype)


def dynamic_sampling_keep(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """DAPO dynamic sampling: False for every member of a group whose rewards are all equal.

    Such a group has zero outcome advantage everywhere, so it carries no GRPO signal; a group
    of one is all-equal by definition. Equality is exact (verifier rewards are discrete).
    """
    _check(rewards, group_ids)
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    _, inv = torch.unique(group_ids, return_inverse=True)
    g = int(inv.max()) + 1
    lo = torch.full((g,), float("inf"), dtype=rewards.dtype, device=rewards.device)
    hi = torch.full((g,), float("-inf"), dtype=rewards.dtype, device=rewards.device)
    lo = lo.scatter_reduce(0, inv, rewards, reduce="amin")
    hi = hi.scatter_reduce(0, inv, rewards, reduce="amax")
    return (hi > lo)[inv]
