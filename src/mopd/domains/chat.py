"""Two short-answer chat domains for a small instruct model (SmolLM2-135M-Instruct):

- `arithmetic`: one-step word problems answered with one equation (`17 + 8 = 25`), whose
  final number is checked with math-verify (the `math` domain's verifier) - the paper's
  Math domain in miniature;
- `capitals`: rewrite a short phrase in capital letters, checked word by word - an
  instruction-following domain (a format constraint plus exact content).

Answers are a few tokens long, so a CPU can afford RL on them, and the model starts well
below what it can learn: room for a teacher.
"""

from __future__ import annotations

import random
import re

from mopd.domains.base import Example
from mopd.domains.math import _ITEMS, _PEOPLE, _TEMPLATES, MathDomain, extract_answer, math_reward
from mopd.domains.splits import SeededSplits


class ArithmeticDomain(MathDomain):
    """Word problems with operations from `ops` (a subset of "+-*").

    The reference answer is the worked equation (`35 - 17 = 18`): SFT learns that format, and
    the verifier compares the final number of a completion with the equation's result. A
    135M model cannot add in its head in one token; writing the operands first lets it.
    """

    INSTRUCTION = "Answer with the equation and its result."

    def __init__(self, name: str = "arithmetic", seed: int = 0, n_train: int = 2000, n_eval: int = 200,
                 max_value: int = 50, max_factor: int = 12, ops: str = "+-*") -> None:
        if not ops or set(ops) - set("+-*"):
            raise ValueError(f"domain {name!r}: ops must be a non-empty subset of '+-*', got {ops!r}")
        self.templates = [t for t in _TEMPLATES if t[1] in ops]
        super().__init__(name, seed, n_train, n_eval, max_value, max_factor)

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        template, op = rng.choice(self.templates)
        name, pron = rng.choice(_PEOPLE)
        item = rng.choice(_ITEMS)
        if op == "*":
            a, b = rng.randint(2, self.max_factor), rng.randint(2, self.max_factor)
        else:
            a, b = rng.randint(1, self.max_value), rng.randint(1, self.max_value)
            if op == "-":
                a, b = max(a, b), min(a, b)
        ans = {"+": a + b, "-": a - b, "*": a * b}[op]
        return template.format(name=name, pron=pron, item=item, a=a, b=b), f"{a} {op} {b} = {ans}"

    def _example(self, question: str, answer: str) -> Example:
        turn = {"role": "user", "content": f"{question} {self.INSTRUCTION}"}
        return Example(domain=self.name, messages=(turn,), answer=answer)

    def reward(self, completion: str, example: Example) -> float:
        gold = extract_answer(example.answer) if example.answer is not None else None
        return 0.0 if gold is None else math_reward(completion, gold)


# Common short words: every phrase is plain English the model has seen in both cases.
_WORDS = tuple("""
red blue green black white big small old new hot cold fast slow happy sad tall short soft loud
quiet dog cat bird fish horse cow duck frog bear lion car bus boat train bike road house door
window table chair bed book pen cup plate apple bread cake milk water tea rice egg tree flower
river lake sea hill rain snow sun moon star sky cloud wind city town park shop school garden
king queen girl boy man woman baby friend teacher doctor farmer music song game ball box bag
hat coat shoe ring key clock lamp phone letter map stone gold paper wood glass
""".split())

_CAPS_TEMPLATES = (
    "Rewrite in capital letters: {p}",
    "Write this phrase in all capital letters: {p}",
    "Repeat the following in uppercase: {p}",
    "Convert to upper case: {p}",
)

_WORD = re.compile(r"[A-Za-z]+")


class CapitalsDomain(SeededSplits):
    """`Rewrite in capital letters: red old boat` -> `RED OLD BOAT`.

    Reward 1 when the completion's words are exactly the phrase's words in capitals, in
    order (spacing and punctuation are free); a lower-case letter anywhere breaks the rule.
    """

    def __init__(self, name: str = "capitals", seed: int = 0, n_train: int = 2000, n_eval: int = 200,
                 min_words: int = 2, max_words: int = 4) -> None:
        if not 1 <= min_words <= max_words:
            raise ValueError(f"domain {name!r}: need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        self.name, self.seed = name, seed
        self.min_words, self.max_words = min_words, max_words
        self._make_splits(seed, n_train, n_eval)

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        words = rng.sample(_WORDS, rng.randint(self.min_words, self.max_words))
        phrase = " ".join(words)
        return rng.choice(_CAPS_TEMPLATES).format(p=phrase), phrase.upper()

    def _example(self, question: str, answer: str) -> Example:
        return Example(domain=self.name, messages=({"role": "user", "content": question},), answer=answer)

    def reward(self, completion: str, example: Example) -> float:
        if not isinstance(completion, str) or example.answer is None:
            return 0.0
        return 1.0 if _WORD.findall(completion) == example.answer.split() else 0.0
