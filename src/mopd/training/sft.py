"""Supervised fine-tuning on (prompt, answer) pairs: the common init of every stage, and the
off-policy baseline (SFT on teacher rollouts).

Only answer tokens (and the closing EOS) are trained; the prompt is context. Batches reuse
the rollout structures: an answer is a "completion" whose tokens are all masked in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from mopd.algorithms.logprobs import token_logprobs
from mopd.config.schema import LoggingConfig, OptimConfig
from mopd.data.prompts import DataError, render_prompt
from mopd.domains.base import Example
from mopd.rollout.types import Rollout, collate
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


def sft_rollouts(examples: list[Example], tokenizer) -> list[Rollout]:
    out = []
    for ex in examples:
        a = answer_ids(ex, tokenizer)
        out.append(Rollout.from_completion(ex.domain, render_prompt(ex, tokenizer), a, [0.0] * len(a), example=ex))
    return out


def sft_loss(model, rollouts: list[Rollout], pad_id: int) -> torch.Tensor:
    """Mean negative log-likelihood per answer token."""
    batch = collate(rollouts, pad_id)
    lp = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.gen_mask).logprobs
    return -(lp * batch.gen_mask).sum() / batch.gen_mask.sum().clamp(min=1)


def run_sft(model, tokenizer, examples: list[Example], optim: OptimConfig, settings: SFTSettings,
            output_dir: str | Path | None = None, logging: LoggingConfig | None = None,
            name: str = "sft") -> list[float]:
    """Train for `optim.steps` batches drawn by epochs over a seeded shuffle; returns the losses."""
    if not examples:
        raise DataError("SFT got no examples")
    data = sft_rollouts(examples, tokenizer)
    optimizer, scheduler = build_optimizer(model, optim)
    rng = random.Random(settings.seed)
    order: list[int] = []
    logger = MetricsLogger(output_dir, logging or LoggingConfig()) if output_dir else None
    losses = []
    model.train()
    with StepProgress(name, optim.steps, enabled=(logging or LoggingConfig()).progress) as bar:
        for step in range(optim.steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(optim.grad_accum_steps):
                if len(order) < settings.batch_size:
                    fresh = list(range(len(data)))
                    rng.shuffle(fresh)
                    order.extend(fresh)
                rows, order = order[: settings.batch_size], order[settings.batch_size:]
                loss = sft_loss(model, [data[i] for i in rows], tokenizer.pad_token_id) / optim.grad_accum_steps
                loss.backward()
                total += float(loss.detach())
            if optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(total)
            if logger:
                logger.log(step + 1, {"sft_loss": total, "lr": scheduler.get_last_lr()[0]})
            bar.advance({"loss": total})
    if logger:
        logger.close()
    return losses
