"""The chat domains of the SmolLM2 preset: reference answers and verifiers."""

import re

import pytest

from mopd.domains.base import Example
from mopd.domains.chat import ArithmeticDomain, CapitalsDomain
from mopd.domains.registry import build_domain


def question(e) -> str:
    return e.messages[-1]["content"]


def test_arithmetic_answers_are_correct_equations():
    d = ArithmeticDomain(n_train=200, n_eval=50, max_value=30, max_factor=10, ops="+-*")
    ops = set()
    for e in d.train_examples() + d.eval_examples():
        a, op, b, ans = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (-?\d+)", e.answer).groups()
        ops.add(op)
        assert int(ans) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert int(ans) >= 0 and a in question(e) and b in question(e)
        assert question(e).endswith(ArithmeticDomain.INSTRUCTION) and e.messages[0]["role"] == "user"
        assert d.reward(e.answer, e) == 1.0
    assert ops == {"+", "-", "*"}
    only_add = ArithmeticDomain(n_train=20, n_eval=0, ops="+")
    assert all(" + " in e.answer for e in only_add.train_examples())


@pytest.mark.parametrize("completion, expected", [
    ("17 - 9 = 8", 1.0), ("8", 1.0), ("The answer is \\boxed{8}.", 1.0), ("17 - 9 = 8.0", 1.0),
    ("17 - 9 = 7", 0.0), ("17 - 9 = 8 apples, 9 were taken", 0.0), ("", 0.0), ("eight", 0.0),
])
def test_arithmetic_reward_checks_the_final_number(completion, expected):
    d = ArithmeticDomain(n_train=1, n_eval=0)
    e = Example(domain="arithmetic", messages=({"role": "user", "content": "q"},), answer="17 - 9 = 8")
    assert d.reward(completion, e) == expected


def test_arithmetic_rejects_unknown_ops():
    with pytest.raises(ValueError, match="ops"):
        ArithmeticDomain(ops="+/")


def test_capitals_answers_and_reward():
    d = CapitalsDomain(n_train=100, n_eval=20, min_words=2, max_words=3)
    for e in d.train_examples() + d.eval_examples():
        phrase = question(e).rsplit(": ", 1)[1]
        assert e.answer == phrase.upper() and 2 <= len(phrase.split()) <= 3
        assert d.reward(e.answer, e) == 1.0
        assert d.reward(f'"{e.answer}."', e) == 1.0  # quotes and punctuation are free
        assert d.reward(phrase, e) == 0.0  # not in capitals
        assert d.reward(e.answer.title(), e) == 0.0
        assert d.reward(e.answer + " OK", e) == 0.0  # extra words
        assert d.reward(e.answer + " (done)", e) == 0.0  # a lower-case word anywhere
    e = d.eval_examples()[0]
    assert d.reward(" ".join(reversed(e.answer.split())), e) == 0.0  # order matters
    assert d.reward(None, e) == 0.0


def test_chat_domains_are_registered_with_their_params():
    assert isinstance(build_domain("a", "arithmetic", {"ops": "+-", "n_train": 5, "n_eval": 2}), ArithmeticDomain)
    assert isinstance(build_domain("c", "capitals", {"max_words": 4, "n_train": 5, "n_eval": 2}), CapitalsDomain)
    with pytest.raises(ValueError, match="min_words"):
        CapitalsDomain(min_words=3, max_words=2)


def test_smollm2_preset_builds_seeded_disjoint_splits():
    from mopd.pipeline.presets import PRESETS
    from mopd.pipeline.stages import Domains

    cfg = PRESETS["smollm2"]()
    assert cfg.base.path == "smollm2" and [d.name for d in cfg.domains] == ["arithmetic", "capitals"]
    a, b = Domains.build(cfg), Domains.build(PRESETS["smollm2"]())
    for d in ("arithmetic", "capitals"):
        assert a.train[d] == b.train[d] and a.eval[d] == b.eval[d]  # fixed by the seed
        assert not {question(e) for e in a.train[d]} & {question(e) for e in a.eval[d]}
        assert all(a.verifiers[d](e.answer, e) == 1.0 for e in a.eval[d])
