"""`lookup`: an agentic toy domain that cannot be solved without its tool.

Each example hides a small table of random key -> value pairs. The prompt asks for one
key's value; the only way to learn it is the `get` tool, in the plain-text tool format
(docs/agentic.md). A correct episode, in characters (the tiny models' tokens):

    find:qzk=                 prompt
    call:get(qzk)<eos>        model turn 1: a tool call
    \\nobs:481\\n               observation
    481<eos>                  model turn 2: the answer (reward 1)

Values are drawn per example, independently of the key, so no amount of training on other
examples tells the model a value: it has to copy the key into the call and the value out of
the observation. A char-level tiny model learns both in a few hundred SFT steps.
"""

from __future__ import annotations

import random
import string

from mopd.domains.base import Example
from mopd.domains.splits import draw_unique_pairs
from mopd.envs.base import EpisodeLimits
from mopd.envs.domain import EnvDomain
from mopd.envs.tools import Tool, ToolEnvironment


class LookupEnvironment(ToolEnvironment):
    """One episode: the example's table behind a `get(key)` tool; the final answer is scored."""

    def __init__(self, table: dict[str, str]):
        super().__init__(tools=[Tool("get", self.get, "the value stored under a key")], tool_timeout_s=5.0,
                         max_output_chars=64)
        self.table = table

    def get(self, key: str) -> str:
        return self.table.get(key.strip(), "none")

    def score(self, final: str) -> float:
        return 1.0 if self.example is not None and final.strip() == self.example.answer else 0.0


class LookupDomain(EnvDomain):
    def __init__(self, name: str = "lookup", seed: int = 0, n_train: int = 2000, n_eval: int = 200,
                 key_len: int = 3, value_len: int = 3, table_size: int = 3, max_turns: int = 3,
                 max_tokens: int = 96) -> None:
        if min(key_len, value_len, table_size) < 1:
            raise ValueError(f"domain {name!r}: key_len, value_len and table_size must be >= 1")
        self.seed, self.key_len, self.value_len, self.table_size = seed, key_len, value_len, table_size
        pairs = draw_unique_pairs(self._draw, seed, n_eval + n_train, f"domain {name!r}")
        examples = [self._example(name, p, a) for p, a in pairs]
        super().__init__(name, examples[n_eval:], examples[:n_eval], self._environment,
                         EpisodeLimits(max_turns=max_turns, max_tokens=max_tokens, max_observation_tokens=16,
                                       step_timeout_s=10.0),
                         self._turns)

    def _key(self, rng: random.Random) -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(self.key_len))

    def _value(self, rng: random.Random) -> str:
        return "".join(rng.choice(string.digits) for _ in range(self.value_len))

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        return f"find:{self._key(rng)}=", self._value(rng)

    def _example(self, name: str, prompt: str, value: str) -> Example:
        key = prompt[len("find:"):-1]
        rng = random.Random(f"{self.seed}/{prompt}")  # the other rows of the table: fixed per example
        table = {self._key(rng): self._value(rng) for _ in range(self.table_size - 1)}
        table[key] = value
        return Example(domain=name, prompt=prompt, answer=value, meta={"table": table, "key": key})

    def _environment(self, example: Example) -> LookupEnvironment:
        return LookupEnvironment(dict(example.meta["table"]))

    @staticmethod
    def _turns(example: Example) -> list[str]:
        return [f"call:get({example.meta['key']})", example.answer]
