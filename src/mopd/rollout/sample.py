"""Sample: turn a batch of examples into scored-by-verifier rollouts."""

from __future__ import annotations

import logging

import torch

from mopd.config.schema import SamplingConfig, VerifierConfig
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.envs.base import episode_source
from mopd.rollout.engine import RolloutEngine
from mopd.rollout.episodes import run_episodes
from mopd.rollout.types import Rollout
from mopd.verifiers.safe_reward import Verifier, safe_reward

log = logging.getLogger(__name__)


def eos_ids(tokenizer, model=None) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    return sorted(i for i in ids if i is not None)


def collect_rollouts(engine: RolloutEngine, tokenizer, examples: list[Example], sampling: SamplingConfig,
                     verifiers: dict[str, Verifier], generator: torch.Generator | None = None,
                     settings: VerifierConfig | None = None) -> list[Rollout]:
    rollouts = generate_rollouts(engine, tokenizer, examples, sampling, generator)
    verify_rollouts(rollouts, verifiers, settings or VerifierConfig())
    return rollouts


def generate_rollouts(engine: RolloutEngine, tokenizer, examples: list[Example], sampling: SamplingConfig,
                      generator: torch.Generator | None = None, first_group: int = 0) -> list[Rollout]:
    """Sample `examples`, without rewards yet; their groups are numbered from `first_group` on.
    Examples of agentic domains are played as episodes (mopd.rollout.episodes), with their
    environment's reward; the rollouts keep the order of `examples`."""
    prompts, owners, agentic = [], [], []
    for g, ex in enumerate(examples, start=first_group):
        if episode_source(ex) is not None:
            agentic += [(g, ex)] * sampling.rollouts_per_prompt
            continue
        ids = render_prompt(ex, tokenizer)
        for _ in range(sampling.rollouts_per_prompt):
            prompts.append(ids)
            owners.append((g, ex))
    completions = engine.generate(prompts, sampling.max_new_tokens, sampling.temperature, generator) if prompts else []
    single = [Rollout.from_completion(ex.domain, ids, c.token_ids, c.logprobs, example=ex, group=g,
                                      finished=c.finished, text=tokenizer.decode(c.token_ids, skip_special_tokens=True))
              for ids, (g, ex), c in zip(prompts, owners, completions)]
    if not agentic:
        return single
    episodes = run_episodes(engine, tokenizer, agentic, sampling.max_new_tokens, sampling.temperature, generator)
    return sorted(single + episodes, key=lambda r: r.group)  # stable: a group's rollouts stay in order


def verify_rollouts(rollouts: list[Rollout], verifiers: dict[str, Verifier], settings: VerifierConfig) -> None:
    """Set each rollout's reward from its domain's verifier (domains without one keep None)."""
    for r in rollouts:
        verifier = verifiers.get(r.domain)
        if verifier is not None and r.episode is None:  # an episode's reward is its environment's
            r.reward = safe_reward(verifier, r.text, r.example, settings.timeout_s, settings.isolation)
