"""The teacher interface: score given token ids, return per-token log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from mopd.rollout.types import TokenBatch


@dataclass
class TeacherScores:
    """Aligned with the batch's tokens ([B, T]); zeros where the token was not generated."""

    logprobs: torch.Tensor  # [B, T]
    topk_ids: torch.Tensor | None = None  # [B, T, k]
    topk_logprobs: torch.Tensor | None = None  # [B, T, k]


class TeacherError(RuntimeError):
    """A teacher could not score a batch. Never replaced by zeros: the step stops."""


class Teacher(Protocol):
    name: str

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores: ...
