"""What an on-policy stage plugs into the loop: how to score rollouts and turn scores into a loss.

Stages (MOPD, domain GRPO, Mix-RL, Cascade RL) differ only here and in their prompts; the
loop (sample -> score -> advantage -> update) is shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from mopd.models.logprobs import TokenLogprobs
from mopd.rollout.types import Rollout, TokenBatch


@dataclass
class Totals:
    """Whole-batch normalisers, so micro-batch losses add up to the full-batch loss.

    Across N processes they are the counts over all ranks divided by N: each rank's loss is its
    sum over this number, and the gradient average over ranks is then the gradient of one
    process on the whole batch, however unevenly tokens fall on the ranks.
    """

    num_sequences: float
    num_tokens: float  # tokens the loss is normalised over (the objective's `loss_mask`)


@dataclass
class LossOutput:
    loss: torch.Tensor
    # Per-token diagnostics [B, T] (detached), averaged per domain over generated tokens.
    token_metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # Tokens whose loss term has a non-zero weight (not masked by IS bounds or dropped groups):
    # a step where no rank has any skips its optimiser step.
    active_tokens: int = 0


class Objective(ABC):
    # Top-k width the student forward must gather log-probs for (0: sampled tokens only).
    topk: int = 0
    # True when a row's signals depend only on that row and its group (MOPD): the batch may then
    # be scored chunk by chunk, while later chunks generate, and the pieces stacked with
    # `concat_signals`. False (GRPO: whole-batch token counts): `score` sees the whole batch.
    rowwise: bool = False
    # Whether the loss weighs tokens by pi_student / pi_sampler (algorithm.is_correction): what a
    # batch sampled one update behind the student (sampling.ahead) needs.
    corrects_stale_samples: bool = False

    @abstractmethod
    def score(self, rollouts: list[Rollout], batch: TokenBatch) -> dict[str, torch.Tensor]:
        """Signals with the batch's rows first (teacher log-probs, rewards...)."""

    @abstractmethod
    def loss_mask(self, batch: TokenBatch, signals: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tokens a token-normalised loss divides by (bool [B, T])."""

    @abstractmethod
    def loss(self, fwd: TokenLogprobs, batch: TokenBatch, signals: dict[str, torch.Tensor],
             totals: Totals) -> LossOutput:
        """This micro-batch's loss, a sum over the whole batch's `totals` (micro-batches add up)."""


def concat_signals(parts: list[dict[str, torch.Tensor]], length: int) -> dict[str, torch.Tensor]:
    """Stack the signals of consecutive chunks of a batch into the batch's signals.

    Per-row tensors ([b]) are concatenated; per-token ones ([b, T_chunk, ...]) are first
    zero-padded to the batch's `length`, as a whole-batch `score` would have returned them.
    """
    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.dim() < 2:
            return t
        return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1]))

    return {k: torch.cat([pad(p[k]) for p in parts]) for k in parts[0]}
