"""The rollout-engine interface: sample completions and their sampling log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log mu of each sampled token under the engine's sampling distribution
    finished: bool  # ended with an EOS token (included in token_ids) rather than the length limit


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[Completion]: ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (no-op when it shares them)."""
        ...
