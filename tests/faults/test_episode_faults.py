"""Faults in agentic episodes cost an episode (or a turn), never the run, and are counted.

The environment is a user file loaded like any user domain (`python:...`); the model's turns
are scripted per prompt, so each episode meets exactly one fault. The last test runs them
all through one MOPD training step: every prompt comes back as a rollout, the step updates,
and the metrics count each fault.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from mopd.config.schema import AlgorithmConfig, OptimConfig, SamplingConfig
from mopd.data.mixture import MixtureSampler
from mopd.domains.registry import build_domain
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.episodes import run_episodes
from mopd.rollout.scripted import ScriptedEngine
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.router import TeacherRouter
from mopd.training.run import OnPolicyRun
from mopd.training.step import train_one_step
from mopd.training.optim import build_optimizer

ENV_FILE = textwrap.dedent('''
    import time
    from mopd.envs.base import Observation
    from mopd.envs.tools import Tool, ToolEnvironment

    limits = {"max_turns": 3, "max_tokens": 200, "max_observation_tokens": 64, "step_timeout_s": 1.0}
    CASES = ["ok", "parse", "raises", "hangs", "floods", "crash", "step_hangs", "reset_crash", "reward_crash"]

    def train_examples():
        return [{"prompt": f"{c}:=", "answer": "42"} for c in CASES]

    def eval_examples():
        return train_examples()[:1]

    def _hang():
        time.sleep(30)

    class Env(ToolEnvironment):
        def __init__(self, case):
            super().__init__(tools=[Tool("get", lambda key: "42"), Tool("boom", lambda key: 1 / 0),
                                    Tool("sleep", lambda key: _hang()), Tool("flood", lambda key: "x" * 5_000_000)],
                             tool_timeout_s=0.3)
            self.case = case

        def reset(self, example):
            if self.case == "reset_crash":
                raise RuntimeError("reset fell over")
            return super().reset(example)

        def step(self, turn):
            if self.case == "crash" and turn.tool_call is not None:
                raise KeyError("the environment fell over")
            if self.case == "step_hangs":
                _hang()
            return super().step(turn)

        def score(self, final):
            if self.case == "reward_crash":
                raise ValueError("no reward today")
            return float(final.strip() == "42")

    def environment(example):
        return Env(example.prompt.split(":")[0])
''')

# What the model says in each case: a tool call (or a broken one), then the answer.
CALLS = {"ok": "call:get(k)", "parse": "call:get(k", "raises": "call:boom(k)", "hangs": "call:sleep(k)",
         "floods": "call:flood(k)", "crash": "call:get(k)", "step_hangs": "call:get(k)",
         "reset_crash": "call:get(k)", "reward_crash": "call:get(k)"}


@pytest.fixture
def domain(tmp_path):
    path = tmp_path / "faulty_env.py"
    path.write_text(ENV_FILE)
    return build_domain("faulty", f"python:{path}")


def policy(tok):
    def say(history: list[int]) -> str:
        text = tok.decode(history, skip_special_tokens=True)
        case = text.split(":")[0]
        return "42" if "obs:" in text else CALLS[case]
    return say


def play(domain, tok):
    examples = domain.train_examples()
    rollouts = run_episodes(ScriptedEngine(tok, policy(tok)), tok, list(enumerate(examples)), 32)
    return {ex.prompt.split(":")[0]: r for ex, r in zip(examples, rollouts)}


def test_each_fault_costs_a_turn_or_an_episode_and_is_counted(domain):
    tok = char_tokenizer()
    by_case = play(domain, tok)
    ok = by_case["ok"]
    assert ok.reward == 1.0 and ok.episode.end == "done" and ok.episode.tool_calls == 1
    # A broken call, a tool that raises, hangs or floods: an error observation, and the model's next
    # turn still answers (reward 1).
    for case, counter in (("parse", "parse_errors"), ("raises", "tool_errors"), ("hangs", "tool_errors"),
                          ("floods", "tool_errors")):
        r = by_case[case]
        assert getattr(r.episode, counter) == 1, (case, r.episode)
        assert r.episode.env_errors == 0 and r.episode.turns == 2 and r.reward == 1.0, (case, r.episode)
        assert "obs:error" in r.text or case == "floods", (case, r.text)
    assert "ZeroDivisionError" in by_case["raises"].text and "timed out" in by_case["hangs"].text
    flood = by_case["floods"]
    assert "[cut]" in flood.text and len(flood.token_ids) < 160  # megabytes never reach the tokens
    # The environment itself failing ends its episode, reward 0, counted.
    for case in ("crash", "step_hangs", "reset_crash", "reward_crash"):
        r = by_case[case]
        assert r.episode.env_errors == 1 and r.reward == 0.0, (case, r.episode)
    assert sum(by_case["reset_crash"].gen_mask) == 0 and by_case["crash"].episode.turns == 1


def test_faults_through_a_training_step_lose_nothing(domain):
    tok = char_tokenizer()
    model = tiny_model(tok, seed=1)
    examples = domain.train_examples()
    router = TeacherRouter({"t": HFTeacher("t", tiny_model(tok, seed=2))}, {"faulty": "t"})
    optim = OptimConfig(lr=1e-3, steps=1)
    optimizer, scheduler = build_optimizer(model, optim)
    run = OnPolicyRun(model=model, tokenizer=tok, engine=ScriptedEngine(tok, policy(tok)),
                      sampler=MixtureSampler({"faulty": examples}, {"faulty": 1.0}),
                      objective=MOPDObjective(router, AlgorithmConfig(is_correction=None)),
                      optimizer=optimizer, scheduler=scheduler,
                      sampling=SamplingConfig(prompts_per_step=len(examples), max_new_tokens=32, overlap_chunks=3),
                      optim=optim, output_dir=None)
    before = [p.detach().clone() for p in model.parameters()]
    m = train_one_step(run)
    assert m["sequences"] == len(examples)  # every prompt came back as a rollout
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # and was trained on
    n = len(examples)
    assert m["tool_parse_errors/faulty"] == pytest.approx(1 / n)
    assert m["tool_errors/faulty"] == pytest.approx(3 / n)
    assert m["env_errors/faulty"] == pytest.approx(4 / n)
    assert m["reward/faulty"] == pytest.approx(5 / n)  # ok + the four that recovered from a tool fault
    assert m["turns/faulty"] > 1 and m["tool_calls/faulty"] > 0
