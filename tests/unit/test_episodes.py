"""Episode rollouts on the transformers engine: exact token layout, teacher scores, losses.

A random tiny model rarely ends a turn on its own; the engine is given many stop tokens
instead, so turns are short, end "finished", and get observations appended.
"""

from __future__ import annotations

import pytest
import torch

from mopd.config.schema import AlgorithmConfig
from mopd.domains.base import Example
from mopd.envs.base import EpisodeLimits, Observation, Opening
from mopd.envs.domain import EnvDomain
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.engine import RolloutEngine
from mopd.rollout.episodes import run_episodes
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.types import collate
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.router import TeacherRouter
from mopd.training.update import update_step

STOPS = "0123456789aeiou "


class EchoEnv:
    """Answers every turn with its length; a turn holding '7' ends the episode."""

    def reset(self, example):
        self.turns = []
        return Opening(prompt=example.prompt)

    def step(self, turn):
        self.turns.append(turn.text)
        return Observation(done=True) if "7" in turn.text else Observation(f"len {len(turn.text)} t{len(self.turns)}")

    def reward(self):
        return float(len(self.turns))


def echo_domain(n: int = 6, max_turns: int = 4, max_tokens: int = 120) -> EnvDomain:
    rows = [Example(domain="echo", prompt=f"go:{i}=") for i in range(n)]
    return EnvDomain("echo", rows, rows[:2], lambda ex: EchoEnv(), EpisodeLimits(max_turns, max_tokens))


class Recording(RolloutEngine):
    """The engine, with what each generate call was asked and answered."""

    def __init__(self, engine):
        self.engine, self.answers = engine, {}

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)

    def generate(self, prompts, max_new_tokens, temperature=1.0, generator=None):
        outs = self.engine.generate(prompts, max_new_tokens, temperature, generator)
        for p, c in zip(prompts, outs):
            self.answers[tuple(p)] = c
        return outs


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok, seed=3)


def stop_engine(model, tok):
    return HFRolloutEngine(model, tok.pad_token_id, [tok.eos_token_id] + tok.convert_tokens_to_ids(list(STOPS)))


@pytest.fixture(scope="module")
def episodes(model, tok):
    engine = Recording(stop_engine(model, tok))
    items = [(i, ex) for i, ex in enumerate(echo_domain().train_examples())]
    rollouts = run_episodes(engine, tok, items, 12, 1.0, torch.Generator().manual_seed(0))
    return rollouts, engine.answers


def test_model_positions_hold_the_sampled_ids_and_observations_the_rendered_text(episodes, tok):
    rollouts, answers = episodes
    observed = 0
    for r in rollouts:
        pos = r.prompt_len
        assert not any(r.gen_mask[:pos]) and r.token_ids[:pos] == tok(r.example.prompt)["input_ids"]
        turn_no = 0
        while pos < len(r.token_ids):
            # The prompt of each turn was exactly the history so far: never re-tokenized.
            c = answers[tuple(r.token_ids[:pos])]
            n = min(len(c.token_ids), len(r.token_ids) - pos)
            assert r.token_ids[pos:pos + n] == c.token_ids[:n]
            assert all(r.gen_mask[pos:pos + n])
            assert r.sample_logprobs[pos:pos + n] == pytest.approx(c.logprobs[:n])
            turn_no += 1
            text = tok.decode(c.token_ids, skip_special_tokens=True)
            pos += n
            if pos == len(r.token_ids):
                break
            obs = tok(f"\nobs:len {len(text)} t{turn_no}\n", add_special_tokens=False)["input_ids"]
            assert r.token_ids[pos:pos + len(obs)] == obs
            assert not any(r.gen_mask[pos:pos + len(obs)]) and not any(r.sample_logprobs[pos:pos + len(obs)])
            pos += len(obs)
            observed += 1
        assert turn_no == r.episode.turns
    assert observed >= 3  # the check saw observations, not only one-turn episodes
    assert {r.episode.end for r in rollouts} >= {"done"}


def test_episode_ends_at_its_limits(model, tok):
    dom = echo_domain(n=4, max_turns=2, max_tokens=40)
    rollouts = run_episodes(stop_engine(model, tok), tok, list(enumerate(dom.train_examples())), 12, 1.0,
                            torch.Generator().manual_seed(1))
    for r in rollouts:
        assert r.episode.turns <= 2 and len(r.token_ids) <= 40
        assert r.finished == (r.episode.end == "done")
    assert {r.episode.end for r in rollouts} - {"done"}  # some ran into a limit: unfinished


def _batch(rollouts, tok):
    return collate(rollouts, tok.pad_token_id, ["echo"])


def test_teacher_logprob_at_each_model_token_matches_a_per_position_reference(episodes, tok):
    rollouts, _ = episodes
    teacher_model = tiny_model(tok, seed=11)
    scores = HFTeacher("t", teacher_model).score(_batch(rollouts, tok)).logprobs
    with torch.no_grad():
        for i, r in enumerate(rollouts[:3]):
            for t in [t for t, m in enumerate(r.gen_mask) if m][::3]:
                logits = teacher_model(torch.tensor([r.token_ids[:t]])).logits[0, -1]
                ref = torch.log_softmax(logits.float(), -1)[r.token_ids[t]]
                assert float(scores[i, t]) == pytest.approx(float(ref), abs=1e-4)
            assert not scores[i][~torch.tensor(r.gen_mask + [False] * (scores.shape[1] - len(r.gen_mask)))].any()


def _with_observations_changed(r, tok):
    """A copy of rollout `r` whose observations say something else (same lengths), and the
    position of the first changed token."""
    from dataclasses import replace
    env = [t for t in range(r.prompt_len, len(r.token_ids)) if not r.gen_mask[t]]
    assert env, "the rollout needs an observation between two turns"
    ids = list(r.token_ids)
    x, y = tok.convert_tokens_to_ids(["x", "y"])
    for t in env:
        ids[t] = x if ids[t] != x else y
    return replace(r, token_ids=ids), env[0]


def test_environment_tokens_change_no_teacher_score_before_them(episodes, tok):
    rollouts, _ = episodes
    r = next(r for r in rollouts if r.episode.turns >= 2)
    changed, start = _with_observations_changed(r, tok)
    teacher = HFTeacher("t", tiny_model(tok, seed=11))
    a = teacher.score(_batch([r], tok)).logprobs[0]
    b = teacher.score(_batch([changed], tok)).logprobs[0]
    assert torch.equal(a[:start], b[:start])
    assert not torch.equal(a[start:], b[start:])  # the turn after it sees the new observation


def test_loss_gradient_has_no_term_at_environment_tokens(episodes, tok, model):
    """Whatever sits at observation positions (teacher scores, sampling log-probs) does not
    reach the loss or its gradient: only model tokens are trained on."""
    rollouts, _ = episodes
    batch = _batch(rollouts, tok)
    router = TeacherRouter({"t": HFTeacher("t", tiny_model(tok, seed=11))}, {"echo": "t"})
    objective = MOPDObjective(router, AlgorithmConfig(is_correction=None))
    signals = objective.score(rollouts, batch)

    def grads(signals, batch):
        step = _NoStep()
        model.zero_grad(set_to_none=True)  # the stand-in optimiser leaves gradients in place
        scalars, _ = update_step(model, step, step, batch, signals, objective, 1, None)
        return scalars["loss"], [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss_a, grads_a = grads(signals, batch)
    env = batch.attention_mask.bool() & ~batch.gen_mask
    noisy = {**signals, "lp_teacher": torch.where(env, torch.randn_like(signals["lp_teacher"]) * 9,
                                                  signals["lp_teacher"])}
    batch.sample_logprobs[env] = -3.0
    loss_b, grads_b = grads(noisy, batch)
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(grads_a, grads_b))


class _NoStep:
    def zero_grad(self, set_to_none=True): ...

    def step(self): ...

    def get_last_lr(self):
        return [0.0]


def test_self_teacher_on_episodes_gives_zero_advantage_and_gradient(episodes, tok, model):
    rollouts, _ = episodes
    batch = _batch(rollouts, tok)
    router = TeacherRouter({"self": HFTeacher.frozen_copy_of("self", model)}, {"echo": "self"})
    objective = MOPDObjective(router, AlgorithmConfig(is_correction=None))
    signals = objective.score(rollouts, batch)
    step = _NoStep()
    model.zero_grad(set_to_none=True)
    scalars, tok_metrics = update_step(model, step, step, batch, signals, objective, 2, None)
    assert tok_metrics["advantage"].abs().max() < 1e-4
    assert tok_metrics["reverse_kl"].abs().max() < 1e-4
    assert scalars["grad_norm"] < 1e-4
    # ...and the IS ratio of the engine's sampling log-probs is 1 on model tokens: nothing masked.
    is_on = MOPDObjective(router, AlgorithmConfig())
    _, tok_metrics = update_step(model, step, step, batch, signals, is_on, 1, None)
    assert tok_metrics["masked"].sum() == 0
