"""The rollout-engine interface: sample completions and their sampling log-probs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log mu of each sampled token under the engine's sampling distribution
    finished: bool  # ended with an EOS token (included in token_ids) rather than the length limit


class RolloutEngine(ABC):
    """What the training loop asks of a sampler: completions, and the student's new weights.

    Only `generate` and `sync_weights` must be written; the other capabilities have defaults
    that suit an engine sampling from the trainer's own parameters (the transformers engine).
    """

    # Whether the engine samples from the trainer's very parameters (no copy of its own). Such
    # an engine cannot sample the next batch while the update changes them (sampling.ahead).
    shares_trainer_weights: bool = True

    @abstractmethod
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[Completion]:
        """One completion per prompt, with the log-prob of each sampled token."""

    @abstractmethod
    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (no-op when it shares them)."""

    def awake(self) -> ContextManager:
        """Keep the engine ready across several `generate` calls (one step's chunks).

        An engine that frees its memory for the trainer after each `generate` (vLLM's sleep
        mode) would otherwise pay a weight push per chunk. Default: nothing to hold.
        """
        return nullcontext(self)

    def defer_weights(self, model) -> None:
        """Take `model`'s weights later, at `ready()` or the next `generate`, not now.

        With sampling.ahead the push then overlaps the next update's forward and backward,
        which leave the weights as they are; that update's optimiser step waits for `ready()`.
        Default: an engine that cannot defer takes them at once.
        """
        self.sync_weights(model)

    def ready(self) -> None:
        """Take the weights left pending by `defer_weights` now. Default: nothing is pending."""

    def close(self) -> None:
        """Free what the engine holds beyond the trainer's model (an in-process vLLM engine and
        its memory) now, before the next run of the process starts its own. Default: nothing."""


def stop_token_ids(eos_ids: list[int] | int) -> list[int]:
    """The ids that end a completion (included in it), as a list."""
    return [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)


def check_prompts(prompts: list[list[int]]) -> bool:
    """Whether there is anything to sample; an empty prompt (nothing to condition on) is an error."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("cannot sample from an empty prompt")
    return bool(prompts)
