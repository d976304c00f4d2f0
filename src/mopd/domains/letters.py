"""Two string domains over one small letter alphabet, for experiments where domains interfere.

`rev:cabjd=` -> `djbac` and `sort:cabjd=` -> `abcdj` read the same characters and differ only in
the prefix, so training one of them pulls the shared weights toward the other's answers: RL on
one domain costs the other, as it does between real domains. Answers are as long as the input
(min_len..max_len letters) and the reward is exact match, so it is sparse once strings are long.
"""

from __future__ import annotations

import random
import string

from mopd.domains.base import Example
from mopd.domains.lookup import LookupDomain
from mopd.domains.toy import ToyDomain

TRANSFORMS = {"copy": lambda s: s, "reverse": lambda s: s[::-1], "sort": lambda s: "".join(sorted(s))}
TASKS = {"reverse": ("rev", TRANSFORMS["reverse"]), "sort": ("sort", TRANSFORMS["sort"])}


class LetterDomain(ToyDomain):
    """`task` (reverse | sort) applied to strings of min_len..max_len of the first `letters` letters."""

    def __init__(self, name: str = "letters", seed: int = 0, n_train: int = 2000, n_eval: int = 200,
                 task: str = "reverse", letters: int = 10, min_len: int = 5, max_len: int = 8) -> None:
        if task not in TASKS:
            raise ValueError(f"domain {name!r}: task must be one of {sorted(TASKS)}, got {task!r}")
        if not 2 <= letters <= 26 or not 1 <= min_len <= max_len:
            raise ValueError(f"domain {name!r}: need 2 <= letters <= 26 and 1 <= min_len <= max_len")
        self.task, self.alphabet = task, string.ascii_lowercase[:letters]
        self.min_len, self.max_len = min_len, max_len
        super().__init__(name, seed, n_train, n_eval)

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        word = "".join(rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len)))
        prefix, answer = TASKS[self.task]
        return f"{prefix}:{word}=", answer(word)


class LetterLookupDomain(LookupDomain):
    """`lookup` whose hidden values are letter strings of the same alphabet, and whose answer is
    the value put through `task` (copy | reverse | sort): an agentic domain that reads and writes
    the characters the two string domains do, and whose answer is as long as the value."""

    def __init__(self, name: str = "lookup_letters", seed: int = 0, n_train: int = 2000, n_eval: int = 200,
                 task: str = "copy", letters: int = 10, key_len: int = 3, min_len: int = 5, max_len: int = 8,
                 table_size: int = 3, max_turns: int = 3, max_tokens: int = 96) -> None:
        if task not in TRANSFORMS:
            raise ValueError(f"domain {name!r}: task must be one of {sorted(TRANSFORMS)}, got {task!r}")
        if not 2 <= letters <= 26 or not 1 <= min_len <= max_len:
            raise ValueError(f"domain {name!r}: need 2 <= letters <= 26 and 1 <= min_len <= max_len")
        self.task, self.alphabet, self.min_len, self.max_len = task, string.ascii_lowercase[:letters], min_len, max_len
        super().__init__(name, seed, n_train, n_eval, key_len=key_len, value_len=max_len, table_size=table_size,
                         max_turns=max_turns, max_tokens=max_tokens)

    def _value(self, rng: random.Random) -> str:
        return "".join(rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len)))

    def _example(self, name: str, prompt: str, value: str) -> Example:
        ex = super()._example(name, prompt, value)
        return Example(domain=name, prompt=prompt, answer=TRANSFORMS[self.task](value), meta=ex.meta)
