"""Update: one optimiser step over a batch of scored rollouts, in length-sorted micro-batches."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from mopd.models.logprobs import token_logprobs
from mopd.objectives.base import Objective, Totals
from mopd.rollout.types import TokenBatch, bucket_tokens
from mopd.distributed.runtime import Local


class NonFiniteUpdate(RuntimeError):
    pass


def micro_batches(batch: TokenBatch, n: int, max_tokens: int | None = None, dist: Local | None = None
                  ) -> list[torch.Tensor]:
    """Row groups of similar length, so little compute goes to padding: at least `n` of them
    (grad_accum_steps), each within `max_tokens` padded tokens (a longer row goes alone). Every
    rank runs as many (a sharded model gathers its weights in each forward): a rank with fewer
    splits its largest groups. The loss is normalised by the whole batch's totals, so how the
    rows are grouped changes the gradient only by rounding."""
    parts = batch.length_buckets(math.ceil(batch.size / n), max_tokens)
    target = (dist or Local()).all_max(len(parts))
    while len(parts) < target:
        i = max(range(len(parts)), key=lambda j: len(parts[j]))
        if len(parts[i]) < 2:
            break  # fewer rows than another rank's micro-batches: as before, each rank's own count
        parts[i:i + 1] = list(torch.tensor_split(parts[i], 2))
    return parts


def on_device(batch: TokenBatch, device: torch.device) -> TokenBatch:
    """The micro-batch where the model is: the loss mixes its tensors with the forward's."""
    moved = {f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
             if isinstance(getattr(batch, f.name), torch.Tensor)}
    return dataclasses.replace(batch, **moved)


def update_step(model, optimizer, scheduler, batch: TokenBatch, signals: dict[str, torch.Tensor],
                objective: Objective, grad_accum_steps: int, grad_clip: float | None,
                temperature: float = 1.0, dist: Local | None = None,
                wait_before_step: Callable[[], object] | None = None, micro_batch_tokens: int | None = None,
                ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Forward/backward every micro-batch, clip, step. Returns scalars and per-token diagnostics.

    `dist` (default: this process alone, plain torch) runs the backward, the gradient sync at
    the last micro-batch, clipping and mixed precision (mopd.distributed.runtime).
    A non-finite loss (on any rank) or gradient norm skips the optimiser step (the gradients
    are dropped) and raises NonFiniteUpdate for the loop to count; every rank decides alike.
    With fp16's loss scaler an overflowing gradient is the scaler's business instead: it skips
    that update and lowers its scale (`fp16_overflow` in the scalars).
    `wait_before_step`: called before the optimiser changes the weights (sampling.ahead: until
    the rollout engine has read them).
    """
    wait_before_step = wait_before_step or (lambda: None)
    dist = dist or Local()
    model.train()
    trainable = dist.trainable(model)
    device = next(model.parameters()).device
    totals = global_totals(batch, objective.loss_mask(batch, signals), dist)
    B, T = batch.input_ids.shape
    token_metrics: dict[str, torch.Tensor] = {}
    loss_total, active = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    parts = micro_batches(batch, grad_accum_steps, bucket_tokens(micro_batch_tokens, device), dist)
    for i, rows in enumerate(parts):
        mb = on_device(batch.select(rows), device)
        sig = {k: (v[rows][:, : mb.input_ids.shape[1]] if v.dim() > 1 else v[rows]).to(device)
               for k, v in signals.items()}
        with dist.micro_batch(model, last=i == len(parts) - 1):
            with dist.autocast():
                fwd = token_logprobs(trainable, mb.input_ids, mb.attention_mask, mb.gen_mask,
                                     temperature=temperature, with_entropy=True,
                                     targets=sig["topk_ids"] if objective.topk else None)
                out = objective.loss(fwd, mb, sig, totals)
            dist.backward(out.loss)
        loss_total += float(out.loss.detach())
        active += out.active_tokens
        for k, v in out.token_metrics.items():
            full = token_metrics.setdefault(k, torch.zeros((B, T)))
            full[rows, : v.shape[1]] = v.detach().float().cpu()
    grad_norm = dist.clip_grad_norm(model, grad_clip)  # None: DeepSpeed clips inside its own step
    loss_ok, grad_ok = dist.all_finite(loss_total), grad_norm is None or math.isfinite(grad_norm)
    scalars = {"loss": loss_total, "grad_norm": float("nan") if grad_norm is None else grad_norm}
    if loss_ok and not grad_ok and dist.has_loss_scaler:
        wait_before_step()
        optimizer.step()  # the scaler sees the inf gradients: it skips the update, lowers its scale
        optimizer.zero_grad(set_to_none=True)
        return {**scalars, "lr": scheduler.get_last_lr()[0], "fp16_overflow": 1.0}, token_metrics
    if not (loss_ok and grad_ok):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteUpdate(f"loss {loss_total}, grad norm {grad_norm}")
    if not dist.any(active > 0):
        # Every token masked (all GRPO groups dropped, every token outside the IS bounds): no
        # signal. AdamW would still move the weights on its momentum, and the schedule would
        # advance, so neither happens; the loop counts the step.
        optimizer.zero_grad(set_to_none=True)
        wait_before_step()
        return {**scalars, "lr": scheduler.get_last_lr()[0], "skipped_empty": 1.0}, token_metrics
    wait_before_step()
    optimizer.step()
    scheduler.step()
    return {**scalars, "lr": scheduler.get_last_lr()[0], "skipped_empty": 0.0}, token_metrics


def global_totals(batch: TokenBatch, loss_mask: torch.Tensor, dist: Local) -> Totals:
    """Sequences and loss tokens over every rank, per rank: N processes then give the gradient of
    one process on the whole batch (DDP averages gradients over ranks)."""
    sequences, tokens = dist.all_sum([float(batch.size), float(loss_mask.sum())])
    return Totals(num_sequences=sequences / dist.world, num_tokens=tokens / dist.world)
