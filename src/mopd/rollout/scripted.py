"""A rollout engine that plays given turns: demonstrations for SFT, and tests.

Driving a scripted policy through the real episode driver gives demonstrations the very
token layout that on-policy episodes have (same opening, same observation segments), so SFT
on them teaches the format the student will sample in.
"""

from __future__ import annotations

from typing import Callable

import torch

from mopd.domains.base import Example
from mopd.envs.base import episode_source
from mopd.rollout.engine import Completion, RolloutEngine
from mopd.rollout.episodes import run_episodes
from mopd.rollout.types import Rollout


class ScriptedEngine(RolloutEngine):
    """`policy(history_ids) -> text` says each turn; its ids end with the EOS token.
    Log-probs are 0 (the policy is deterministic)."""

    shares_trainer_weights = True

    def __init__(self, tokenizer, policy: Callable[[list[int]], str]):
        self.tok = tokenizer
        self.policy = policy
        self.calls: list[list[list[int]]] = []  # the prompts of each generate call, for tests

    def sync_weights(self, model) -> None: ...

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[Completion]:
        self.calls.append([list(p) for p in prompts])
        out = []
        for p in prompts:
            ids = list(self.tok(self.policy(list(p)), add_special_tokens=False)["input_ids"])
            ids.append(self.tok.eos_token_id)
            n = min(len(ids), max_new_tokens)
            out.append(Completion(ids[:n], [0.0] * n, finished=n == len(ids)))
        return out


def turns_policy(turns: list[str]) -> Callable[[list[int]], str]:
    """A policy that says `turns` in order (then repeats the last one)."""
    said = iter(turns)
    last = [""]

    def policy(_history: list[int]) -> str:
        last[0] = next(said, last[0])
        return last[0]

    return policy


def demonstration_rollout(example: Example, tokenizer, max_new_tokens: int = 256) -> Rollout:
    """The episode of `example` played by its domain's demonstration, as a rollout whose model
    tokens are the demonstration's turns."""
    source = episode_source(example)
    turns = source.demonstration(example) if source is not None else None
    if not turns:
        raise ValueError(f"domain {example.domain!r} has no demonstration for SFT: give the environment "
                         "file a `demonstration(example)` returning the model's turns")
    engine = ScriptedEngine(tokenizer, turns_policy(turns))
    (rollout,) = run_episodes(engine, tokenizer, [(0, example)], max_new_tokens)
    return rollout
