"""The rollout-engine interface: sample completions and their sampling log-probs."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Protocol

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


def stop_token_ids(eos_ids: list[int] | int) -> list[int]:
    """The ids that end a completion (included in it), as a list."""
    return [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)


def check_prompts(prompts: list[list[int]]) -> bool:
    """Whether there is anything to sample; an empty prompt (nothing to condition on) is an error."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("cannot sample from an empty prompt")
    return bool(prompts)


def awake(engine: RolloutEngine) -> ContextManager:
    """Keep `engine` ready across several `generate` calls (one step's chunks), where it can sleep.

    The vLLM engine frees its memory after each `generate` for the trainer; within a step's
    chunks that would cost a weight push per chunk. Engines without `awake()` need nothing.
    """
    hold = getattr(engine, "awake", None)
    return hold() if hold is not None else nullcontext()
