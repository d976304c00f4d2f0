"""Held-out scores of an agentic domain: the success rate of episodes (their mean reward)."""

from __future__ import annotations

import torch

from mopd.domains.base import Example
from mopd.rollout.engine import RolloutEngine
from mopd.rollout.episodes import run_episodes


def mean_episode_reward(engine: RolloutEngine, tokenizer, examples: list[Example], temperature: float,
                        samples: int, max_new_tokens: int, seed: int, batch_size: int = 128) -> float:
    """Mean environment reward over `samples` episodes per example; `max_new_tokens` bounds each turn."""
    items = [(i, e) for i, e in enumerate(examples) for _ in range(samples)]
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for s in range(0, len(items), batch_size):
        total += sum(r.reward for r in run_episodes(engine, tokenizer, items[s:s + batch_size], max_new_tokens,
                                                    temperature, gen))
    return total / max(len(items), 1)
