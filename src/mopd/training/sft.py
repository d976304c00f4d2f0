"""Supervised fine-tuning on (prompt, answer) pairs: the common init of every stage, and the
off-policy baseline (SFT on teacher rollouts).

Only answer tokens (and the closing EOS) are trained; the prompt is context. Batches reuse
the rollout structures: an answer is a "completion" whose tokens are all masked in.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mopd.models.logprobs import token_logprobs
from mopd.config.schema import LoggingConfig, OptimConfig
from mopd.data.prompts import DataError, render_prompt
from mopd.domains.base import Example
from mopd.envs.base import episode_source
from mopd.rollout.scripted import demonstration_rollout
from mopd.rollout.types import Rollout, collate
from mopd.distributed.runtime import Local
from mopd.training.metrics import MetricsLogger
from mopd.training.optim import build_optimizer
from mopd.training.progress import StepProgress


@dataclass
class SFTSettings:
    batch_size: int = 32
    seed: int = 0


def answer_ids(example: Example, tokenizer) -> list[int]:
    if example.answer is None:
        raise DataError(f"SFT needs an 'answer' for every row; a {example.domain!r} row has none")
    ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]


def sft_rollouts(examples: list[Example | Rollout], tokenizer) -> list[Rollout]:
    out = []
    for ex in examples:
        if isinstance(ex, Rollout):  # already played (the off-policy baseline's teacher episodes): as is
            out.append(ex)
            continue
        if episode_source(ex) is not None:  # an agentic domain: its demonstration, played as an episode
            out.append(demonstration_rollout(ex, tokenizer))
            continue
        a = answer_ids(ex, tokenizer)
        out.append(Rollout.from_completion(ex.domain, render_prompt(ex, tokenizer), a, [0.0] * len(a), example=ex))
    return out


def sft_loss(model, rollouts: list[Rollout], pad_id: int, device: torch.device | None = None) -> torch.Tensor:
    """Mean negative log-likelihood per answer token."""
    batch = collate(rollouts, pad_id)
    ids, attn, mask = batch.input_ids, batch.attention_mask, batch.gen_mask
    if device is not None:
        ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    lp = token_logprobs(model, ids, attn, mask).logprobs
    return -(lp * mask).sum() / mask.sum().clamp(min=1)


def batch_rows(n: int, settings: SFTSettings) -> Iterator[list[int]]:
    """Row indices of each batch: epochs over a seeded shuffle, a batch may span two epochs."""
    rng = random.Random(settings.seed)
    order: list[int] = []
    while True:
        if len(order) < settings.batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order.extend(fresh)
        rows, order = order[: settings.batch_size], order[settings.batch_size:]
        yield rows


def run_sft(model, tokenizer, examples: list[Example | Rollout], optim: OptimConfig, settings: SFTSettings,
            output_dir: str | Path | None = None, logging: LoggingConfig | None = None,
            name: str = "sft", dist: Local | None = None) -> list[float]:
    """Train for `optim.steps` batches drawn by epochs over a seeded shuffle; returns the losses.

    `dist` (mopd.distributed.runtime; default: this process alone) says where and how: every
    rank draws the same batches and trains on its share of each (rows rank, rank + world, ...),
    and the gradients are averaged across ranks. `model` is trained in place.
    """
    if not examples:
        raise DataError("SFT got no examples")
    dist = dist or Local()
    if settings.batch_size < dist.world:
        raise ValueError(f"SFT batch size {settings.batch_size} is smaller than the {dist.world} processes")
    data = sft_rollouts(examples, tokenizer)
    optimizer, scheduler = build_optimizer(model, optim, dist.keeps_master_weights)
    wrapped, optimizer, scheduler = dist.prepare(model, optimizer, scheduler)
    device = next(wrapped.parameters()).device  # prepare may have moved it to the rank's device
    trainable = dist.trainable(wrapped)
    batches = batch_rows(len(data), settings)
    logging = logging or LoggingConfig()
    logger = MetricsLogger(output_dir, logging) if output_dir and dist.is_main else None
    losses = []
    wrapped.train()
    with StepProgress(name, optim.steps, enabled=logging.progress and dist.is_main) as bar:
        for step in range(optim.steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for k in range(optim.grad_accum_steps):
                rows = next(batches)[dist.rank::dist.world]
                with dist.micro_batch(wrapped, last=k == optim.grad_accum_steps - 1):
                    with dist.autocast():
                        loss = sft_loss(trainable, [data[i] for i in rows], tokenizer.pad_token_id,
                                        device) / optim.grad_accum_steps
                    dist.backward(loss)
                total += float(loss.detach())
            if optim.grad_clip:
                dist.clip_grad_norm(wrapped, optim.grad_clip)
            optimizer.step()
            scheduler.step()
            total = dist.mean_metrics({"sft_loss": total})["sft_loss"]
            losses.append(total)
            if logger:
                logger.log(step + 1, {"sft_loss": total, "lr": scheduler.get_last_lr()[0]})
            bar.advance({"loss": total})
    if logger:
        logger.close()
    return losses
