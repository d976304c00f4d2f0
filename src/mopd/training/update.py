"""Update: one optimiser step over a batch of scored rollouts, in length-sorted micro-batches."""

from __future__ import annotations

import math

import torch

from mopd.algorithms.logprobs import token_logprobs
from mopd.objectives.base import Objective, Totals
from mopd.rollout.types import TokenBatch


class NonFiniteUpdate(RuntimeError):
    pass


def micro_batches(batch: TokenBatch, n: int) -> list[torch.Tensor]:
    """Row groups of similar length, so little compute goes to padding."""
    order = torch.argsort(batch.attention_mask.sum(-1), stable=True)
    return [rows for rows in torch.tensor_split(order, min(n, batch.size)) if len(rows)]


def update_step(model, optimizer, scheduler, batch: TokenBatch, signals: dict[str, torch.Tensor],
                objective: Objective, grad_accum_steps: int, grad_clip: float | None,
                temperature: float = 1.0) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Forward/backward every micro-batch, clip, step. Returns scalars and per-token diagnostics.

    A non-finite loss or gradient norm skips the optimiser step (the gradients are dropped)
    and raises NonFiniteUpdate for the loop to count.
    """
    model.train()
    device = next(model.parameters()).device
    totals = Totals(num_sequences=batch.size, num_tokens=int(batch.gen_mask.sum()))
    B, T = batch.input_ids.shape
    token_metrics: dict[str, torch.Tensor] = {}
    loss_total = 0.0
    optimizer.zero_grad(set_to_none=True)
    for rows in micro_batches(batch, grad_accum_steps):
        mb = batch.select(rows)
        sig = {k: v[rows][:, : mb.input_ids.shape[1]] if v.dim() > 1 else v[rows] for k, v in signals.items()}
        fwd = token_logprobs(model, mb.input_ids.to(device), mb.attention_mask.to(device),
                             mb.gen_mask.to(device), temperature=temperature, with_entropy=True,
                             targets=sig["topk_ids"].to(device) if objective.topk else None)
        out = objective.loss(fwd, mb, sig, totals)
        out.loss.backward()
        loss_total += float(out.loss.detach())
        for k, v in out.token_metrics.items():
            full = token_metrics.setdefault(k, torch.zeros((B, T)))
            full[rows, : v.shape[1]] = v.detach().float().cpu()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf")))
    if not (math.isfinite(loss_total) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteUpdate(f"loss {loss_total}, grad norm {grad_norm}")
    optimizer.step()
    scheduler.step()
    return {"loss": loss_total, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0]}, token_metrics
