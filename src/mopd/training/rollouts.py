"""Sample: turn a batch of examples into scored-by-verifier rollouts."""

from __future__ import annotations

import logging

import torch

from mopd.config.schema import SamplingConfig
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.rollout.engine import RolloutEngine
from mopd.rollout.types import Rollout
from mopd.training.verification import DEFAULT_VERIFIER_TIMEOUT_S, Verifier, safe_reward  # noqa: F401

log = logging.getLogger(__name__)


def eos_ids(tokenizer, model=None) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    return sorted(i for i in ids if i is not None)


def collect_rollouts(engine: RolloutEngine, tokenizer, examples: list[Example], sampling: SamplingConfig,
                     verifiers: dict[str, Verifier], generator: torch.Generator | None = None) -> list[Rollout]:
    rollouts = generate_rollouts(engine, tokenizer, examples, sampling, generator)
    verify_rollouts(rollouts, verifiers, sampling)
    return rollouts


def generate_rollouts(engine: RolloutEngine, tokenizer, examples: list[Example], sampling: SamplingConfig,
                      generator: torch.Generator | None = None, first_group: int = 0) -> list[Rollout]:
    """Sample `examples`, without rewards yet; their groups are numbered from `first_group` on."""
    prompts, owners = [], []
    for g, ex in enumerate(examples, start=first_group):
        ids = render_prompt(ex, tokenizer)
        for _ in range(sampling.rollouts_per_prompt):
            prompts.append(ids)
            owners.append((g, ex))
    completions = engine.generate(prompts, sampling.max_new_tokens, sampling.temperature, generator)
    return [Rollout.from_completion(ex.domain, ids, c.token_ids, c.logprobs, example=ex, group=g,
                                    finished=c.finished, text=tokenizer.decode(c.token_ids, skip_special_tokens=True))
            for ids, (g, ex), c in zip(prompts, owners, completions)]


def verify_rollouts(rollouts: list[Rollout], verifiers: dict[str, Verifier], sampling: SamplingConfig) -> None:
    """Set each rollout's reward from its domain's verifier (domains without one keep None)."""
    for r in rollouts:
        verifier = verifiers.get(r.domain)
        if verifier is not None:
            r.reward = safe_reward(verifier, r.text, r.example, sampling.verifier_timeout_s,
                                   sampling.verifier_isolation)
