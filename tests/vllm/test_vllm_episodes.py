"""Agentic episodes on the vLLM engine: the trajectory holds exactly the ids vLLM sampled and
the rendered observations, and the sampling log-probs of the model's tokens equal the
trainer's log-probs over the whole trajectory (one forward, observations included as context)."""

import pytest
import torch

from tiny_vllm import OPTS, vllm_tiny
from mopd.models.logprobs import token_logprobs
from mopd.domains.base import Example
from mopd.envs.base import EpisodeLimits, Observation, Opening
from mopd.envs.domain import EnvDomain
from mopd.rollout.engine import RolloutEngine
from mopd.rollout.episodes import run_episodes
from mopd.rollout.types import collate
from mopd.rollout.vllm_engine import VLLMRolloutEngine

pytestmark = pytest.mark.vllm


class Echo:
    def reset(self, example):
        self.n = 0
        return Opening(prompt=example.prompt)

    def step(self, turn):
        self.n += 1
        return Observation(f"len {len(turn.text)} t{self.n}")

    def reward(self):
        return float(self.n)


class Recording(RolloutEngine):
    def __init__(self, engine):
        self.engine, self.answers = engine, {}

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)

    def generate(self, prompts, max_new_tokens, temperature=1.0, generator=None):
        outs = self.engine.generate(prompts, max_new_tokens, temperature, generator)
        self.answers.update({tuple(p): c for p, c in zip(prompts, outs)})
        return outs


def test_vllm_episodes_keep_the_sampled_ids_and_their_logprobs():
    model, tok = vllm_tiny(seed=3)
    eos = [tok.eos_token_id] + tok.convert_tokens_to_ids(list("0123456789aeiou "))
    engine = VLLMRolloutEngine(model, eos, OPTS, seed=0)
    try:
        rows = [Example(domain="echo", prompt=f"go:{i}=") for i in range(6)]
        dom = EnvDomain("echo", rows, rows, lambda ex: Echo(), EpisodeLimits(max_turns=3, max_tokens=100))
        rec = Recording(engine)
        rollouts = run_episodes(rec, tok, list(enumerate(dom.train_examples())), 12, 1.0,
                                torch.Generator().manual_seed(0))
    finally:
        engine.close()
    observed = 0
    for r in rollouts:
        pos, turn = r.prompt_len, 0
        while pos < len(r.token_ids):
            c = rec.answers[tuple(r.token_ids[:pos])]  # each turn's prompt was the exact history
            n = min(len(c.token_ids), len(r.token_ids) - pos)
            assert r.token_ids[pos:pos + n] == c.token_ids[:n] and all(r.gen_mask[pos:pos + n])
            turn += 1
            text = tok.decode(c.token_ids, skip_special_tokens=True)
            pos += n
            if pos < len(r.token_ids):
                obs = tok(f"\nobs:len {len(text)} t{turn}\n", add_special_tokens=False)["input_ids"]
                assert r.token_ids[pos:pos + len(obs)] == obs and not any(r.gen_mask[pos:pos + len(obs)])
                pos += len(obs)
                observed += 1
    assert observed >= 3
    b = collate(rollouts, tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, b.input_ids, b.attention_mask, b.gen_mask).logprobs
    torch.testing.assert_close(b.sample_logprobs[b.gen_mask], lp[b.gen_mask], atol=1e-4, rtol=0)
