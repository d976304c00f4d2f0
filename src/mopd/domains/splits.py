"""Seeded, disjoint train / eval splits for generated domains.

A generated domain draws (prompt, answer) pairs from a seeded generator. The eval split is
drawn first, so a seed's eval split does not move when n_train changes, and prompts are
deduplicated across both, so no eval prompt is ever trained on.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from mopd.domains.base import Example


def draw_unique_pairs(
    draw: Callable[[random.Random], tuple[str, str]], seed: int, n: int, what: str
) -> list[tuple[str, str]]:
    """`n` (prompt, answer) pairs with distinct prompts, fixed for a given seed.

    Callers take the first slice as eval and the rest as train: deduping across both is what
    keeps the splits disjoint (no eval prompt is ever trained on).
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    # A generous cap on attempts turns "the space is too small" into an error, not a hang.
    for _ in range(max(1000, 50 * n)):
        if len(pairs) == n:
            break
        prompt, answer = draw(rng)
        if prompt not in seen:
            seen.add(prompt)
            pairs.append((prompt, answer))
    if len(pairs) < n:
        raise ValueError(
            f"{what}: could only find {len(pairs)} distinct prompts, {n} requested "
            "(n_train + n_eval); lower them or widen the size parameters"
        )
    return pairs


class SeededSplits:
    """Split logic shared by the generated domains: subclasses say how to draw one pair
    (`_draw`) and how to make it an `Example` (`_example`), then call `_make_splits`."""

    name: str

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        raise NotImplementedError

    def _example(self, prompt: str, answer: str) -> Example:
        return Example(domain=self.name, prompt=prompt, answer=answer)

    def _make_splits(self, seed: int, n_train: int, n_eval: int) -> None:
        pairs = draw_unique_pairs(self._draw, seed, n_eval + n_train, f"domain {self.name!r}")
        self._eval = [self._example(p, a) for p, a in pairs[:n_eval]]
        self._train = [self._example(p, a) for p, a in pairs[n_eval:]]

    def train_examples(self) -> list[Example]:
        return list(self._train)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)
