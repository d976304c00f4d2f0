"""Weight-merging baselines over state dicts: plain (weighted) average and task arithmetic.

Floating tensors are combined in float32 and cast back to their own dtype (bf16 checkpoints
would lose precision summing in bf16). Non-float tensors (int buffers, step counters) cannot
be meaningfully averaged, so they are copied from the first / base state dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

StateDict = Mapping[str, Tensor]


def _check_compatible(ref: StateDict, other: StateDict, what: str) -> None:
    missing, extra = sorted(set(ref) - set(other)), sorted(set(other) - set(ref))
    if missing or extra:
        raise ValueError(f"{what}: keys differ (missing {missing[:5]}, unexpected {extra[:5]})")
    for k, t in ref.items():
        if other[k].shape != t.shape:
            raise ValueError(f"{what}: shape of {k!r} is {tuple(other[k].shape)}, expected {tuple(t.shape)}")


def linear_average(state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """sum_i w_i * sd_i with w normalised to sum 1 (uniform when None)."""
    if not state_dicts:
        raise ValueError("linear_average: no state dicts given")
    n = len(state_dicts)
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"linear_average: {len(w)} weights for {n} state dicts")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"linear_average: weights must be non-negative with a positive sum, got {w}")
    total = sum(w)
    w = [x / total for x in w]
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        _check_compatible(first, sd, f"linear_average: state dict {i} vs state dict 0")
    out: dict[str, Tensor] = {}
    for k, t in first.items():
        if not t.is_floating_point():
            out[k] = t.clone()
            continue
        acc = torch.zeros(t.shape, dtype=torch.float32, device=t.device)
        for wi, sd in zip(w, state_dicts):
            acc += wi * sd[k].to(device=t.device, dtype=torch.float32)
        out[k] = acc.to(t.dtype)
    return out


def task_arithmetic(base: StateDict, finetuned: Sequence[StateDict], scale: float) -> dict[str, Tensor]:
    """base + scale * sum_i (ft_i - base): add the scaled task vectors of each finetuned model."""
    if not finetuned:
        raise ValueError("task_arithmetic: no finetuned state dicts given")
    for i, sd in enumerate(finetuned):
        _check_compatible(base, sd, f"task_arithmetic: finetuned {i} vs base")
    out: dict[str, Tensor] = {}
    for k, t in base.items():
        if not t.is_floating_point():
            out[k] = t.clone()
            continue
        b = t.to(torch.float32)
        delta = torch.zeros_like(b)
        for sd in finetuned:
            delta += sd[k].to(device=t.device, dtype=torch.float32) - b
        out[k] = (b + scale * delta).to(t.dtype)
    return out
