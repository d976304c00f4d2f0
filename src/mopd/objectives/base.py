"""What an on-policy stage plugs into the loop: how to score rollouts and turn scores into a loss.

Stages (MOPD, domain GRPO, Mix-RL, Cascade RL) differ only here and in their prompts; the
loop (sample -> score -> advantage -> update) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from mopd.algorithms.logprobs import TokenLogprobs
from mopd.rollout.types import Rollout, TokenBatch


@dataclass
class Totals:
    """Whole-batch normalisers, so micro-batch losses add up to the full-batch loss."""

    num_sequences: int
    num_tokens: int


@dataclass
class LossOutput:
    loss: torch.Tensor
    # Per-token diagnostics [B, T] (detached), averaged per domain over generated tokens.
    token_metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(Protocol):
    # Top-k width the student forward must gather log-probs for (0: sampled tokens only).
    topk: int

    def score(self, rollouts: list[Rollout], batch: TokenBatch) -> dict[str, torch.Tensor]:
        """Signals with the batch's rows first (teacher log-probs, rewards...)."""
        ...

    def loss(self, fwd: TokenLogprobs, batch: TokenBatch, signals: dict[str, torch.Tensor],
             totals: Totals) -> LossOutput: ...
