"""Per-step prompt batches that follow the domain mixture weights.

Deterministic and resumable: each step gives its slots to the domains furthest below their
target share so far, and each domain walks through seeded permutations of its prompts.
The whole state is the count of prompts drawn per domain (and, once the shares have been
changed during a run by `set_shares`, the shares and the counts at that change).
"""

from __future__ import annotations

import random

from mopd.domains.base import Example


class MixtureSampler:
    def __init__(self, examples: dict[str, list[Example]], weights: dict[str, float], seed: int = 0):
        total = sum(weights.values())
        if total <= 0:
            raise ValueError("mixture weights sum to zero")
        empty = [d for d in weights if weights[d] > 0 and not examples.get(d)]
        if empty:
            raise ValueError(f"domains {empty} have a positive weight but no prompts")
        self.examples = examples
        self.shares = {d: w / total for d, w in weights.items() if w > 0}
        self.seed = seed
        self.drawn = {d: 0 for d in self.shares}
        self.since = {d: 0 for d in self.shares}  # draws when the shares were last set
        self._orders: dict[tuple[str, int], list[int]] = {}

    def set_shares(self, weights: dict[str, float]) -> None:
        """New mixture weights from the next batch on (adaptive mixtures); domains keep their place
        in their prompt order, and deficits are counted from now, not from the start."""
        total = sum(weights.get(d, 0.0) for d in self.shares)
        if total <= 0:
            raise ValueError("mixture weights sum to zero")
        self.shares = {d: weights.get(d, 0.0) / total for d in self.shares}
        self.since = dict(self.drawn)

    def counts(self, n: int) -> dict[str, int]:
        """How many of the next `n` prompts each domain gets."""
        drawn = {d: self.drawn[d] - self.since[d] for d in self.shares}
        total = sum(drawn.values())
        out = {d: 0 for d in self.shares}
        for i in range(n):
            # Largest deficit against the exact share; ties broken by domain order.
            d = max(self.shares, key=lambda k: self.shares[k] * (total + i + 1) - drawn[k])
            drawn[d] += 1
            out[d] += 1
        return out

    def _nth(self, domain: str, k: int) -> Example:
        pool = self.examples[domain]
        epoch, pos = divmod(k, len(pool))
        key = (domain, epoch)
        if key not in self._orders:
            order = list(range(len(pool)))
            random.Random(f"{self.seed}/{domain}/{epoch}").shuffle(order)
            self._orders = {key: order}  # only the current epoch is needed
        return pool[self._orders[key][pos]]

    def next_batch(self, n: int) -> list[Example]:
        batch = []
        for d, c in self.counts(n).items():
            batch.extend(self._nth(d, self.drawn[d] + j) for j in range(c))
            self.drawn[d] += c
        return batch

    def state_dict(self) -> dict:
        return {"drawn": dict(self.drawn), "seed": self.seed, "shares": dict(self.shares), "since": dict(self.since)}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        if "shares" in state:  # older checkpoints: the shares of the config, counted from the start
            self.shares = {d: state["shares"].get(d, 0.0) for d in self.shares}
        self.drawn = {d: state["drawn"].get(d, 0) for d in self.shares}
        self.since = {d: state.get("since", {}).get(d, 0) for d in self.shares}
