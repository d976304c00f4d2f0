"""Per-domain scores on held-out prompts: greedy accuracy and pass@1 over samples at temperature 1."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.envs.base import episode_source
from mopd.eval.episodes import mean_episode_reward
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.sample import eos_ids
from mopd.verifiers.safe_reward import Verifier, safe_reward

GREEDY_TEMPERATURE = 1e-5  # sampling at this temperature is argmax up to exact ties


@dataclass
class DomainScore:
    domain: str
    greedy: float
    pass_at_1: float  # mean reward over `samples` draws per prompt at temperature 1
    n_prompts: int
    samples: int


def mean_reward(engine: HFRolloutEngine, tokenizer, examples: list[Example], verifier: Verifier,
                temperature: float, samples: int, max_new_tokens: int, seed: int, batch_size: int = 128) -> float:
    if examples and episode_source(examples[0]) is not None:  # an agentic domain: episodes, the environment's reward
        return mean_episode_reward(engine, tokenizer, examples, temperature, samples, max_new_tokens, seed, batch_size)
    prompts = [render_prompt(e, tokenizer) for e in examples for _ in range(samples)]
    owners = [e for e in examples for _ in range(samples)]
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for s in range(0, len(prompts), batch_size):
        outs = engine.generate(prompts[s:s + batch_size], max_new_tokens, temperature, gen)
        for c, ex in zip(outs, owners[s:s + batch_size]):
            total += safe_reward(verifier, tokenizer.decode(c.token_ids, skip_special_tokens=True), ex)
    return total / max(len(prompts), 1)


def evaluate_domain(model, tokenizer, domain: str, examples: list[Example], verifier: Verifier,
                    samples: int = 4, max_new_tokens: int = 32, seed: int = 0) -> DomainScore:
    engine = HFRolloutEngine(model, tokenizer.pad_token_id, eos_ids(tokenizer, model))
    greedy = mean_reward(engine, tokenizer, examples, verifier, GREEDY_TEMPERATURE, 1, max_new_tokens, seed)
    sampled = mean_reward(engine, tokenizer, examples, verifier, 1.0, samples, max_new_tokens, seed + 1)
    return DomainScore(domain, greedy, sampled, len(examples), samples)
