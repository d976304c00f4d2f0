"""A `math` domain for real chat models: arithmetic word problems and a math-verify verifier.

The verifier is the part that carries over to real data (any dataset row of domain `math`
with a reference answer); the built-in generator gives a seeded, offline prompt source that
a small instruct model (SmolLM2-135M) can partly solve, so there is room for a teacher.
"""

from __future__ import annotations

import logging
import random
import re
import threading

from math_verify import parse, verify

from mopd.domains.base import Example
from mopd.domains.splits import SeededSplits

log = logging.getLogger(__name__)

# A number not glued to a word or a preceding digit: "12-5" yields "12" and "5", not "-5".
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")

INSTRUCTION = "Put your final answer in \\boxed{}."


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text`, braces balanced; None if absent or unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last boxed answer, else the last number."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _as_latex(s: str) -> str:
    # math-verify finds LaTeX reliably inside $...$; a bare "\frac{1}{2}" or "47" works too,
    # but wrapping removes the guesswork. Already-delimited strings are left alone.
    return s if ("$" in s or "\\boxed" in s) else f"${s}$"


def math_reward(completion: str, answer: str, timeout_s: int = 5) -> float:
    """1.0 if the completion's final answer equals `answer` mathematically, else 0.0.

    Never raises: a rollout from an untrained model is often garbage, and one bad string must
    not stop a training step.
    """
    try:
        pred = extract_answer(completion)
        if pred is None:
            return 0.0
        # math-verify's timeout uses SIGALRM, which only works in the main thread; elsewhere
        # (teacher/verifier threads) go without it. The parsed strings are short, so it is safe.
        t = timeout_s if threading.current_thread() is threading.main_thread() else None
        gold_p = parse(_as_latex(answer), parsing_timeout=t)
        pred_p = parse(_as_latex(pred), parsing_timeout=t)
        if not gold_p or not pred_p:
            return 0.0
        return 1.0 if verify(gold_p, pred_p, timeout_seconds=t) else 0.0
    except Exception as e:  # noqa: BLE001 - any failure is a wrong answer, never a crash
        log.debug("math_reward: treating %r as wrong (%s)", completion[:80], e)
        return 0.0


# (template, op). Subtraction templates take a >= b so answers stay non-negative.
_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{name} has {a} {item} and buys {b} more. How many {item} does {pron} have now?", "+"),
    ("A shelf holds {a} {item}. {name} puts {b} more on it. How many {item} are on the shelf?", "+"),
    ("{name} has {a} {item} and gives {b} of them away. How many {item} does {pron} have left?", "-"),
    ("There were {a} {item} in a basket. {name} took {b}. How many {item} are left in the basket?", "-"),
    ("{name} buys {a} bags with {b} {item} in each bag. How many {item} does {pron} have in total?", "*"),
    ("A box holds {a} {item}. How many {item} are in {b} boxes?", "*"),
)
_PEOPLE = (("Tom", "he"), ("Anna", "she"), ("Ravi", "he"), ("Mei", "she"), ("Omar", "he"), ("Lena", "she"))
_ITEMS = ("apples", "pencils", "marbles", "cookies", "books", "stickers", "coins", "cards")


class MathDomain(SeededSplits):
    """Arithmetic word problems as single-turn chat prompts, scored by `math_reward`."""

    def __init__(
        self,
        name: str = "math",
        seed: int = 0,
        n_train: int = 2000,
        n_eval: int = 200,
        max_value: int = 50,
        max_factor: int = 12,
    ) -> None:
        if max_value < 2 or max_factor < 2:
            raise ValueError(f"domain {name!r}: max_value and max_factor must be >= 2")
        self.name = name
        self.seed = seed
        self.max_value, self.max_factor = max_value, max_factor
        self._make_splits(seed, n_train, n_eval)

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        template, op = rng.choice(_TEMPLATES)
        name, pron = rng.choice(_PEOPLE)
        item = rng.choice(_ITEMS)
        if op == "*":
            a, b = rng.randint(2, self.max_factor), rng.randint(2, self.max_factor)
            ans = a * b
        else:
            a, b = rng.randint(1, self.max_value), rng.randint(1, self.max_value)
            if op == "-":
                a, b = max(a, b), min(a, b)
            ans = a + b if op == "+" else a - b
        return template.format(name=name, pron=pron, item=item, a=a, b=b), str(ans)

    def _example(self, question: str, answer: str) -> Example:
        turn = {"role": "user", "content": f"{question} {INSTRUCTION}"}
        return Example(domain=self.name, messages=(turn,), answer=answer)

    def reward(self, completion: str, example: Example) -> float:
        if example.answer is None:
            return 0.0
        return math_reward(completion, example.answer)
