import textwrap

import pytest

from mopd.domains.base import Domain, Example
from mopd.domains.math import MathDomain, extract_answer, math_reward
from mopd.domains.registry import BUILTIN_DOMAINS, build_domain, parse_python_kind
from mopd.domains.toy import AdditionDomain, ReversalDomain, SortingDomain
from mopd.domains.user import load_user_domain

SMALL = {"n_train": 300, "n_eval": 50}


def prompt_text(e: Example) -> str:
    return e.prompt if e.prompt is not None else e.messages[-1]["content"]


# ---------- splits: fixed per seed, disjoint, well-formed ----------


@pytest.mark.parametrize("kind", sorted(BUILTIN_DOMAINS))
def test_splits_fixed_per_seed_and_disjoint(kind):
    a = build_domain(kind, kind, {"seed": 3, **SMALL})
    b = build_domain(kind, kind, {"seed": 3, **SMALL})
    c = build_domain(kind, kind, {"seed": 4, **SMALL})
    assert isinstance(a, Domain)
    assert a.train_examples() == b.train_examples() and a.eval_examples() == b.eval_examples()
    assert a.eval_examples() != c.eval_examples()
    train, ev = a.train_examples(), a.eval_examples()
    assert len(train) == 300 and len(ev) == 50
    train_p = {prompt_text(e) for e in train}
    eval_p = {prompt_text(e) for e in ev}
    assert len(train_p) == 300 and len(eval_p) == 50  # deduped within each split
    assert not train_p & eval_p  # and across splits
    assert all(e.domain == kind and e.answer for e in train + ev)
    # The eval split does not move when n_train changes.
    d = build_domain(kind, kind, {"seed": 3, "n_train": 10, "n_eval": 50})
    assert d.eval_examples() == ev


def test_toy_examples_are_correct():
    for e in AdditionDomain(max_digits=3, **SMALL).train_examples():
        a, b = e.prompt.removeprefix("add:").removesuffix("=").split("+")
        assert int(e.answer) == int(a) + int(b) and max(len(a), len(b)) <= 3
    for e in ReversalDomain(min_len=2, max_len=4, **SMALL).train_examples():
        w = e.prompt.removeprefix("rev:").removesuffix("=")
        assert e.answer == w[::-1] and 2 <= len(w) <= 4 and w.isalpha() and w.islower()
    for e in SortingDomain(**SMALL).train_examples():
        s = e.prompt.removeprefix("sort:").removesuffix("=")
        assert e.answer == "".join(sorted(s)) and 3 <= len(s) <= 6 and s.isdigit()


def test_toy_prompt_formats():
    assert AdditionDomain(**SMALL).train_examples()[0].prompt.startswith("add:")
    assert ReversalDomain(**SMALL).train_examples()[0].prompt.startswith("rev:")
    assert SortingDomain(**SMALL).train_examples()[0].prompt.startswith("sort:")


def test_too_small_space_is_an_error():
    with pytest.raises(ValueError, match="distinct prompts"):
        AdditionDomain(max_digits=1, n_train=200, n_eval=10)  # only 100 sums of two digits


def test_math_examples_are_chat_and_correct():
    d = MathDomain(**SMALL)
    for e in d.train_examples()[:50]:
        assert e.prompt is None and len(e.messages) == 1 and e.messages[0]["role"] == "user"
        assert "\\boxed{}" in e.messages[0]["content"]
        assert int(e.answer) >= 0
    ops = set()
    for e in d.train_examples():
        q = e.messages[0]["content"]
        ops.add("+" if "more" in q else "-" if ("away" in q or "took" in q) else "*")
    assert ops == {"+", "-", "*"}


# ---------- toy verifiers ----------


@pytest.mark.parametrize(
    "completion,expected",
    [("82", 1.0), (" 82\n", 1.0), ("83", 0.0), ("82 ", 1.0), ("8 2", 0.0), ("", 0.0), ("#$%^garbage", 0.0), ("082", 0.0)],
)
def test_toy_reward(completion, expected):
    ex = Example(domain="addition", prompt="add:37+45=", answer="82")
    assert AdditionDomain(**SMALL).reward(completion, ex) == expected


def test_toy_reward_never_raises():
    d = ReversalDomain(**SMALL)
    ex = Example(domain="reversal", prompt="rev:abc=", answer="cba")
    assert d.reward(None, ex) == 0.0  # type: ignore[arg-type]
    assert d.reward("cba", Example(domain="reversal", prompt="rev:abc=")) == 0.0
    assert d.reward("cba", ex) == 1.0


# ---------- math verifier ----------


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("\\boxed{47}", "47", 1.0),
        ("So he has 12 + 35 = 47 apples. \\boxed{47}", "47", 1.0),
        ("the answer is 47.", "47", 1.0),
        ("47.0", "47", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("so it is 0.5", "\\frac{1}{2}", 1.0),
        ("1,234 apples", "1234", 1.0),
        ("12 - 5 = 7", "7", 1.0),
        ("\\boxed{48}", "47", 0.0),
        ("\\boxed{48} but maybe 47", "47", 0.0),  # the boxed answer wins over the last number
        ("the answer is 46", "47", 0.0),
        ("", "47", 0.0),
        ("garbage ###", "47", 0.0),
        ("\\boxed{", "47", 0.0),
        ("\\boxed{\\frac{1}{2", "0.5", 0.0),
        ("}}}{{{\\boxed{\\\\}}$$$", "47", 0.0),
    ],
)
def test_math_reward(completion, answer, expected):
    assert math_reward(completion, answer) == expected
    ex = Example(domain="math", messages=({"role": "user", "content": "q"},), answer=answer)
    assert MathDomain(n_train=1, n_eval=1).reward(completion, ex) == expected


def test_extract_answer():
    assert extract_answer("a \\boxed{1} b \\boxed{\\frac{2}{3}}") == "\\frac{2}{3}"
    assert extract_answer("x 3 then -4.5 done") == "-4.5"
    assert extract_answer("no numbers") is None


def test_math_reward_in_a_thread():
    # math-verify's default timeout uses SIGALRM, which raises outside the main thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_reward, "\\boxed{47}", "47").result() == 1.0


# ---------- registry ----------


def test_build_domain_builtin_and_errors():
    d = build_domain("add2", "addition", {"max_digits": 1, "n_train": 5, "n_eval": 5})
    assert d.name == "add2" and all(e.domain == "add2" for e in d.train_examples())
    with pytest.raises(ValueError, match="unknown kind 'nope'.*addition.*math.*reversal.*sorting"):
        build_domain("x", "nope", {})
    with pytest.raises(ValueError, match="unknown params \\['max_len'\\]"):
        build_domain("x", "addition", {"max_len": 3})


def test_parse_python_kind():
    assert parse_python_kind("python:/a/b.py") == ("/a/b.py", None)
    assert parse_python_kind("python:/a/b.py:my_dom") == ("/a/b.py", "my_dom")
    assert parse_python_kind("python:C:\\a\\b.py") == ("C:\\a\\b.py", None)


# ---------- user domains ----------

FUNCTIONS_FILE = """
from mopd.domains.base import Example
name = "echo"

def train_examples():
    return [Example(domain="echo", prompt="say:a=", answer="a"), {"prompt": "say:b=", "answer": "b"}]

def eval_examples():
    return [{"prompt": "say:c=", "answer": "c"}]

def reward(completion, example):
    return float(completion.strip() == example.answer)
"""

CLASS_FILE = """
from dataclasses import dataclass
from mopd.domains.base import Example

@dataclass
class Upper:
    name: str = "upper"
    n: int = 2

    def train_examples(self):
        return [Example(domain=self.name, prompt=f"up:{c}=", answer=c.upper()) for c in "abcdef"[: self.n]]

    def eval_examples(self):
        return [Example(domain=self.name, prompt="up:z=", answer="Z")]

    def reward(self, completion, example):
        return float(completion == example.answer)

domain = Upper
instance = Upper(name="fixed", n=1)
"""


def write(tmp_path, text, fname="dom.py"):
    p = tmp_path / fname
    p.write_text(textwrap.dedent(text))
    return p


def test_user_functions_style(tmp_path):
    p = write(tmp_path, FUNCTIONS_FILE)
    d = build_domain("echo", f"python:{p}", {})
    assert isinstance(d, Domain) and d.name == "echo"
    assert [e.prompt for e in d.train_examples()] == ["say:a=", "say:b="]
    assert all(e.domain == "echo" for e in d.train_examples() + d.eval_examples())
    assert d.reward(" c ", d.eval_examples()[0]) == 1.0 and d.reward("x", d.eval_examples()[0]) == 0.0
    with pytest.raises(ValueError, match="module's name is 'echo' but the config calls it 'other'"):
        load_user_domain(p, name="other")
    with pytest.raises(ValueError, match="take no params"):
        load_user_domain(p, name="echo", params={"n": 1})


def test_user_class_style(tmp_path):
    p = write(tmp_path, CLASS_FILE)
    d = build_domain("up3", f"python:{p}", {"n": 3})  # class gets params and the config's name
    assert d.name == "up3" and [e.answer for e in d.train_examples()] == ["A", "B", "C"]
    assert d.reward("Z", d.eval_examples()[0]) == 1.0
    obj = build_domain("fixed", f"python:{p}:instance", {})
    assert len(obj.train_examples()) == 1
    with pytest.raises(ValueError, match="named 'fixed' but the config calls it 'wrong'"):
        build_domain("wrong", f"python:{p}:instance", {})
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        build_domain("x", f"python:{p}:missing", {})
    with pytest.raises(ValueError, match="cannot build 'domain' with params"):
        build_domain("x", f"python:{p}", {"bogus": 1})


def test_user_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.py"):
        build_domain("x", f"python:{tmp_path}/nowhere.py", {})
    p = write(tmp_path, "def train_examples():\n    return []\n", "partial.py")
    with pytest.raises(ValueError, match=r"partial\.py.*missing: eval_examples, reward"):
        load_user_domain(p, name="x")
    p = write(tmp_path, "domain = 42\n", "notdomain.py")
    with pytest.raises(ValueError, match=r"notdomain\.py: 'domain' is not a Domain"):
        load_user_domain(p, name="x")
    p = write(tmp_path, FUNCTIONS_FILE.replace('name = "echo"', ""), "noname.py")
    with pytest.raises(ValueError, match="no domain name"):
        load_user_domain(p)
    p = write(tmp_path, FUNCTIONS_FILE.replace('domain="echo"', 'domain="other"'), "badlabel.py")
    with pytest.raises(ValueError, match="row 0 has domain 'other', expected 'echo'"):
        load_user_domain(p).train_examples()


def test_user_bad_dict_row(tmp_path):
    p = write(tmp_path, FUNCTIONS_FILE.replace('{"prompt": "say:c=", "answer": "c"}', '{"question": "c"}'), "badrow.py")
    with pytest.raises(ValueError, match=r"badrow\.py: eval_examples\(\) row 0 is not a valid example"):
        load_user_domain(p).eval_examples()


def test_user_file_does_not_touch_sys_path(tmp_path):
    import sys

    before = list(sys.path)
    load_user_domain(write(tmp_path, FUNCTIONS_FILE))
    assert sys.path == before
