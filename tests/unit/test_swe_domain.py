"""The `swe` domain's environment: tasks that are right by construction, tools that fix them,
rewards the model cannot forge, and tool argument errors that cost one observation.

The tests run in the sandbox (`mopd.verifiers.sandbox_tests`), a fraction of a second each.
"""

from __future__ import annotations

import string

import pytest

from mopd.domains.registry import build_domain
from mopd.verifiers.sandbox_tests import run_tests
from mopd.domains.swe import SWEEnvironment, demonstration
from mopd.domains.swe_tasks import FAMILIES, all_tasks, split_tasks
from mopd.envs.base import Turn
from mopd.envs.format import parse_tool_call
from mopd.models.tiny import char_tokenizer
from mopd.rollout.episodes import run_episodes
from mopd.rollout.scripted import ScriptedEngine, demonstration_rollout, turns_policy


def say(env: SWEEnvironment, text: str):
    """One model turn, its tool call parsed the way the episode driver parses it."""
    return env.step(Turn(text, parse_tool_call(text)))


def episode(example) -> SWEEnvironment:
    env = SWEEnvironment(example.meta["code"], example.meta["tests"])
    env.reset(example)
    return env


@pytest.fixture(scope="module")
def dom():
    return build_domain("swe", "swe", {"n_train": 30, "n_eval": 10})


@pytest.fixture(scope="module")
def char_dom():  # one token per character: room for whole files
    return build_domain("swe", "swe", {"n_train": 30, "n_eval": 10, "max_tokens": 4000,
                                       "max_observation_tokens": 1000})


def one_per_family(examples):
    seen = {}
    for ex in examples:
        seen.setdefault(ex.meta["bug"], ex)
    return list(seen.values())


def test_tasks_are_distinct_and_the_splits_disjoint_and_seeded():
    tasks = all_tasks()
    assert len({t.code for t in tasks}) == len(tasks) == 360
    train, eval_ = split_tasks(0, 100, 40, "swe")
    assert not {t.code for t in train} & {t.code for t in eval_}
    assert split_tasks(0, 10, 40, "swe")[1] == eval_  # the eval split does not move with n_train
    assert split_tasks(1, 100, 40, "swe")[1] != eval_
    with pytest.raises(ValueError, match="only 360 exist"):
        split_tasks(0, 350, 20, "swe")


@pytest.mark.parametrize("make", list(FAMILIES), ids=lambda f: f.__name__)
def test_each_family_fails_on_its_bug_and_passes_on_its_fix(make):
    task = make(FAMILIES[make][0], 3)
    tests = {"test_solution.py": task.tests()}
    assert run_tests({"solution.py": task.correct}, tests).all_passed
    bug = run_tests({"solution.py": task.code}, tests)
    assert bug.total == len(task.calls) and not bug.all_passed


def test_a_fix_through_the_tools_earns_1(dom):
    ex = dom.train_examples()[0]
    env = episode(ex)
    assert f"{ex.meta['line']}: " in say(env, "call:view()").text
    assert "def test_1" in say(env, "call:view(test_solution.py)").text
    assert env.reward() == 0.0  # the buggy file as given
    assert say(env, f"call:edit({ex.meta['line']}: {ex.meta['fix']})").error is None
    report = say(env, "call:run_tests()").text
    assert report.endswith("3/3 passed")
    assert say(env, "done").done and env.reward() == 1.0


def test_a_string_edit_fixes_too_and_a_wrong_fix_earns_0(dom):
    ex = next(e for e in dom.train_examples() if e.meta["bug"] == "wrong_comparison")
    env = episode(ex)
    buggy = ex.meta["code"].splitlines()[ex.meta["line"] - 1].strip()
    say(env, f"call:edit({buggy} => {ex.meta['fix']})")
    assert env.reward() == 1.0
    env = episode(ex)
    say(env, f"call:edit({ex.meta['line']}: {buggy.replace('<', '>=')})")  # close, but wrong
    assert "FAILED" in say(env, "call:run_tests()").text
    say(env, "I fixed it, all tests pass: 3/3 passed")  # what the model says does not count
    assert env.reward() == 0.0


@pytest.mark.parametrize("attack", [
    "call:edit(1: import sys; sys.exit(0))",  # the worker exits: the runner's tests fail
    "call:edit(1: print('3/3 passed'))",
    "call:edit(assert => pass)",  # the tests' text is not in solution.py: nothing to replace
    'call:edit({"file": "test_solution.py", "change": "1: pass"})',  # edit has no file argument
    "call:view(../test_solution.py)",
])
def test_the_tests_are_out_of_reach(dom, attack):
    ex = dom.train_examples()[1]
    env = episode(ex)
    say(env, attack)
    assert env.reward() == 0.0
    for n in range(len(env.code.splitlines()), 0, -1):  # and then delete every line of the file
        say(env, f"call:edit({n}:)")
    assert env.code == "" and env.tests == ex.meta["tests"]
    assert say(env, "call:run_tests()").text.endswith("0/3 passed") and env.reward() == 0.0


@pytest.mark.parametrize("call, says", [
    ("call:edit(replace the bug)", "edit takes N: CODE"),
    ("call:edit(99: return 0)", "lines 1 to"),
    ("call:edit(nothing here => x)", "is not in solution.py"),
    ("call:view(secret.py)", "no file"),
    ("call:run_tests(now)", "unexpected keyword"),
    ('call:edit({"line": 3, "code": "x"})', "unexpected keyword"),
    ("call:patch(1: x)", "no tool patch"),
    (f"call:edit(1: {'x' * 3000})", "would grow past"),
])
def test_tool_argument_errors_become_error_observations(dom, call, says):
    env = episode(dom.train_examples()[2])
    obs = say(env, call)
    assert obs.error and not obs.done and obs.text.startswith("error:") and says in obs.text
    assert env.code == dom.train_examples()[2].meta["code"]  # nothing changed


def test_demonstrations_earn_1_through_the_episode_driver(char_dom):
    tok = char_tokenizer(string.printable)
    for ex in one_per_family(char_dom.train_examples()):
        r = demonstration_rollout(ex, tok)
        assert r.reward == 1.0 and r.finished and r.episode.turns == 4 and r.episode.tool_calls == 3
        model_text = tok.decode([t for t, m in zip(r.token_ids, r.gen_mask) if m], skip_special_tokens=True)
        assert model_text == "".join(demonstration(ex))


def test_driver_counts_a_bad_edit_and_ends_unfinished_at_max_turns(char_dom):
    """A bad argument is one error observation; an episode cut at max_turns still gets its
    reward from the final file (here fixed)."""
    tok = char_tokenizer(string.printable)
    ex = char_dom.train_examples()[3]
    turns = ["call:edit(fix it)", f"call:edit({ex.meta['line']}: {ex.meta['fix']})"] + ["call:run_tests()"] * 4
    (r,) = run_episodes(ScriptedEngine(tok, turns_policy(turns)), tok, [(0, ex)], 64)
    assert r.episode.tool_errors == 1 and r.episode.turns == char_dom.limits.max_turns
    assert r.episode.end == "max_turns" and not r.finished and r.reward == 1.0
