"""The MOPD losses (docs/method.md): the sampled-token, policy-gradient form and the top-k form.

Pure functions over [B, T] tensors aligned with tokens; `mask` marks the generated tokens.
Normalisation constants can be passed in so that a batch split into micro-batches sums to
exactly the loss of the whole batch (gradient accumulation).
"""

from __future__ import annotations

import torch


def mopd_advantages(lp_teacher: torch.Tensor, lp_student: torch.Tensor, a_max: float) -> torch.Tensor:
    """A_mopd = clip(lp_T - sg[lp_pi], -A_max, A_max): per-token reverse-KL reward."""
    return (lp_teacher - lp_student.detach()).clamp(-a_max, a_max)


def mixture_advantages(lp_teachers: torch.Tensor, weights: torch.Tensor, lp_student: torch.Tensor,
                       a_max: float) -> torch.Tensor:
    """sum_m w_m clip(lp_T_m - sg[lp_pi], -A_max, A_max) over a mixture's teachers (last dim of
    `lp_teachers` and `weights`, [B, T, M]). Unclipped, with weights summing to 1, this is
    log prod_m T_m^w_m - log pi: the pull toward the weighted geometric mixture of the teachers."""
    return (weights * mopd_advantages(lp_teachers, lp_student.detach()[..., None], a_max)).sum(-1)


def importance_weights(lp_student: torch.Tensor, lp_sample: torch.Tensor,
                       eps_low: float | None, eps_high: float | None) -> torch.Tensor:
    """rho = exp(sg[lp_pi] - lp_mu), zeroed outside [eps_low, eps_high] (IcePop-style mask).

    With both bounds None the correction is off and every weight is 1.
    """
    if eps_low is None and eps_high is None:
        return torch.ones_like(lp_student)
    rho = torch.exp(lp_student.detach() - lp_sample)
    keep = torch.ones_like(rho, dtype=torch.bool)
    if eps_low is not None:
        keep &= rho >= eps_low
    if eps_high is not None:
        keep &= rho <= eps_high
    return torch.where(keep, rho, torch.zeros_like(rho))


def normalise(per_token: torch.Tensor, mask: torch.Tensor, normalization: str,
              num_sequences: float | None = None, num_tokens: float | None = None) -> torch.Tensor:
    """Sum of `per_token` over `mask`, normalised by sequence (mean over sequences of the
    per-sequence token mean) or by token (mean over all tokens of the batch)."""
    mask = mask.to(per_token.dtype)
    if normalization == "sequence":
        lengths = mask.sum(-1).clamp(min=1)
        n = num_sequences if num_sequences is not None else per_token.shape[0]
        return ((per_token * mask).sum(-1) / lengths).sum() / (n if n > 0 else 1)
    if normalization == "token":
        n = num_tokens if num_tokens is not None else int(mask.sum())
        return (per_token * mask).sum() / (n if n > 0 else 1)
    raise ValueError(f"normalization must be 'sequence' or 'token', got {normalization!r}")


def policy_gradient_loss(lp_student: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                         mask: torch.Tensor, normalization: str = "sequence",
                         num_sequences: float | None = None, num_tokens: float | None = None) -> torch.Tensor:
    """loss = - norm( w * A * lp_pi ); w and A carry no gradient."""
    per_token = -(weights.detach() * advantages.detach() * lp_student)
    return normalise(per_token, mask, normalization, num_sequences, num_tokens)


def topk_reverse_kl_loss(student_topk_lp: torch.Tensor, teacher_topk_lp: torch.Tensor, mask: torch.Tensor,
                         normalization: str = "sequence", num_sequences: float | None = None,
                         num_tokens: float | None = None, weights: torch.Tensor | None = None,
                         slot_weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_{v in K_t} pi(v)(log pi(v) - log T(v)) - pi(v) + T(v), on the teacher's top-k support.

    The `- pi + T` term keeps the minimum at pi = T on the truncated support (docs/method.md).
    `weights` ([B, T], no gradient): each position's term times its IS weight (0: masked).
    `slot_weights` ([B, T, M]): a mixture of M teachers, whose top-k sets lie side by side in the
    last dim (M x k); the term is the weighted sum of the per-teacher terms, each on its own support.
    """
    p = student_topk_lp.exp()
    q = teacher_topk_lp.exp()
    terms = p * (student_topk_lp - teacher_topk_lp) - p + q
    if slot_weights is None:
        per_token = terms.sum(-1)
    else:
        M = slot_weights.shape[-1]
        per_token = (terms.unflatten(-1, (M, terms.shape[-1] // M)).sum(-1) * slot_weights).sum(-1)
    if weights is not None:
        per_token = per_token * weights.detach()
    return normalise(per_token, mask, normalization, num_sequences, num_tokens)
