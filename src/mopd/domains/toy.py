"""Three tiny verifiable domains for char-level models: addition, reversal, sorting.

They stand in for the paper's Math / IF / SWE domains on a laptop CPU: each has an exact
answer, so the verifier is a string comparison, and a model of a few hundred thousand
parameters learns each of them in minutes. Prompts end in `=`, the answer follows directly.
"""

from __future__ import annotations

import random
import string

from mopd.domains.base import Example
from mopd.domains.splits import SeededSplits


class ToyDomain(SeededSplits):
    """Exact-match verifier over seeded splits; subclasses only say how to draw one item."""

    name: str

    def __init__(self, name: str, seed: int, n_train: int, n_eval: int) -> None:
        if n_train < 0 or n_eval < 0:
            raise ValueError(f"domain {name!r}: n_train and n_eval must be >= 0")
        self.name = name
        self.seed = seed
        self.n_train = n_train
        self.n_eval = n_eval
        self._make_splits(seed, n_train, n_eval)

    def reward(self, completion: str, example: Example) -> float:
        # Exact match after stripping whitespace; anything else (empty, garbage, wrong type)
        # scores 0.0 rather than raising, since completions come from an untrained model.
        if not isinstance(completion, str) or example.answer is None:
            return 0.0
        return 1.0 if completion.strip() == example.answer else 0.0


class AdditionDomain(ToyDomain):
    """`add:37+45=` -> `82`; operands have 1..max_digits digits."""

    def __init__(
        self,
        name: str = "addition",
        seed: int = 0,
        n_train: int = 2000,
        n_eval: int = 200,
        max_digits: int = 2,
    ) -> None:
        if max_digits < 1:
            raise ValueError(f"domain {name!r}: max_digits must be >= 1, got {max_digits}")
        self.max_digits = max_digits
        super().__init__(name, seed, n_train, n_eval)

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        hi = 10**self.max_digits - 1
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        return f"add:{a}+{b}=", str(a + b)


class _StringDomain(ToyDomain):
    """A toy domain over strings of min_len..max_len characters drawn from `alphabet`."""

    alphabet = ""
    default_name = ""

    def __init__(self, name: str | None = None, seed: int = 0, n_train: int = 2000, n_eval: int = 200,
                 min_len: int = 3, max_len: int = 6) -> None:
        name = name or self.default_name
        if not 1 <= min_len <= max_len:
            raise ValueError(f"domain {name!r}: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        self.min_len, self.max_len = min_len, max_len
        super().__init__(name, seed, n_train, n_eval)

    def _string(self, rng: random.Random) -> str:
        return "".join(rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len)))


class ReversalDomain(_StringDomain):
    """`rev:hello=` -> `olleh`; lowercase words of min_len..max_len letters."""

    alphabet, default_name = string.ascii_lowercase, "reversal"

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        word = self._string(rng)
        return f"rev:{word}=", word[::-1]


class SortingDomain(_StringDomain):
    """`sort:4132=` -> `1234`; strings of min_len..max_len digits (repeats allowed)."""

    alphabet, default_name = string.digits, "sorting"

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        digits = self._string(rng)
        return f"sort:{digits}=", "".join(sorted(digits))
