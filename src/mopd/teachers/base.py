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
    # A teacher with another tokenizer scores character spans, not tokens: token t belongs to
    # the span of columns span_start[t]..span_end[t], and logprobs[t] is the teacher's log-prob
    # of that whole span (docs/cross_tokenizer.md). None: every token is its own span.
    span_start: torch.Tensor | None = None  # long [B, T]
    span_end: torch.Tensor | None = None  # long [B, T]


class TeacherError(RuntimeError):
    """A teacher could not score a batch. Never replaced by zeros: the step stops."""


class Teacher(Protocol):
    name: str

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores: ...
