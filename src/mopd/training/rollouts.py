"""Sample: turn a batch of examples into scored-by-verifier rollouts."""

from __future__ import annotations

import logging
from typing import Callable

import torch

from mopd.config.schema import SamplingConfig
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.rollout.engine import RolloutEngine
from mopd.rollout.types import Rollout

log = logging.getLogger(__name__)
Verifier = Callable[[str, Example], float]


def eos_ids(tokenizer, model=None) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    return sorted(i for i in ids if i is not None)


def safe_reward(verifier: Verifier, text: str, example: Example) -> float:
    # A verifier bug on one sample must not kill a run: that sample gets reward 0.
    try:
        return float(verifier(text, example))
    except Exception as e:  # noqa: BLE001
        log.warning("verifier of domain %s raised %r; reward 0", example.domain, e)
        return 0.0


def collect_rollouts(engine: RolloutEngine, tokenizer, examples: list[Example], sampling: SamplingConfig,
                     verifiers: dict[str, Verifier], generator: torch.Generator | None = None) -> list[Rollout]:
    prompts, owners = [], []
    for g, ex in enumerate(examples):
        ids = render_prompt(ex, tokenizer)
        for _ in range(sampling.rollouts_per_prompt):
            prompts.append(ids)
            owners.append((g, ex))
    completions = engine.generate(prompts, sampling.max_new_tokens, sampling.temperature, generator)
    rollouts = []
    for ids, (g, ex), c in zip(prompts, owners, completions):
        text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
        verifier = verifiers.get(ex.domain)
        reward = safe_reward(verifier, text, ex) if verifier is not None else None
        rollouts.append(Rollout.from_completion(ex.domain, ids, c.token_ids, c.logprobs, example=ex,
                                                group=g, finished=c.finished, reward=reward, text=text))
    return rollouts
