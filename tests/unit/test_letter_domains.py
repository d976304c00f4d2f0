"""The letter domains of the paper preset: answers are the right transform of the input, over
the stated alphabet and lengths, and the agentic one answers with what its tool returns."""

from __future__ import annotations

import pytest

from mopd.domains.registry import build_domain


@pytest.mark.parametrize("task,fn", [("reverse", lambda s: s[::-1]), ("sort", lambda s: "".join(sorted(s)))])
def test_letter_domain_answers_are_the_transform_of_the_input(task, fn):
    dom = build_domain("d", "letters", {"task": task, "letters": 5, "min_len": 8, "max_len": 12, "n_train": 50,
                                        "n_eval": 10})
    for ex in dom.train_examples() + dom.eval_examples():
        word = ex.prompt.split(":", 1)[1][:-1]
        assert set(word) <= set("abcde") and 8 <= len(word) <= 12
        assert ex.answer == fn(word)
        assert dom.reward(ex.answer, ex) == 1.0 and dom.reward(word + "a", ex) == 0.0


def test_lookup_letters_answer_is_the_tool_value_transformed():
    dom = build_domain("lk", "lookup_letters", {"task": "reverse", "letters": 4, "key_len": 4, "min_len": 6,
                                                "max_len": 9, "n_train": 20, "n_eval": 5})
    for ex in dom.eval_examples():
        value = ex.meta["table"][ex.meta["key"]]
        assert set(value) <= set("abcd") and 6 <= len(value) <= 9
        assert ex.answer == value[::-1]


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="task"):
        build_domain("d", "letters", {"task": "shuffle"})
