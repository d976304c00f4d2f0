"""The teacher interface: score given token ids, return per-token log-probs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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


class Teacher(ABC):
    """What the router asks of a teacher: the log-probs it gives the batch's tokens."""

    name: str
    # Whether its weights are loaded now. A pooled teacher may be offloaded (mopd.teachers.pool):
    # the router scores the loaded ones first, so that a teacher is not swapped in twice a step.
    resident: bool = True
    # Whether it scores text with a tokenizer of its own (mopd.teachers.cross_tokenizer): its
    # scores then carry character spans, and the top-k loss cannot use it.
    cross_tokenizer: bool = False

    @abstractmethod
    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        """Per-token log-probs of the batch's tokens (and top-k ids / log-probs when topk > 0)."""

    def close(self) -> None:
        """Free what it holds beyond Python memory (an in-process vLLM engine, a connection). Default: nothing."""
