"""Agentic domains: a Domain whose examples are played as episodes against an environment.

`EnvDomain` wraps examples and an environment factory into a Domain that the rest of mopd
handles like any other (mixture, routing, verifier, evaluation): each of its examples carries
the domain in `meta` (`mopd.envs.base.episode_source`), which sends it through the episode
driver wherever examples are sampled.

User environments load from a Python file (`builtin: "python:my_env.py"`) that defines
`environment(example)` (a class or factory returning an Environment), `train_examples()` and
`eval_examples()` (Examples or dicts), and optionally `limits` (an EpisodeLimits or a dict of
its fields) and `demonstration(example)` (the turns of a correct episode, for SFT).
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Callable

from mopd.domains.base import Example
from mopd.envs.base import EPISODES_KEY, EpisodeLimits, Environment, Turn


class EnvDomain:
    """A named agentic domain. `reward(completion, example)` scores `completion` as the final
    answer of an episode (the environment's own reward after that one turn); episodes get
    their reward from their environment directly."""

    def __init__(self, name: str, train: list[Example], eval_: list[Example],
                 environment: Callable[[Example], Environment], limits: EpisodeLimits | None = None,
                 demonstration: Callable[[Example], list[str]] | None = None):
        self.name = name
        self.limits = limits or EpisodeLimits()
        self._environment = environment
        self._demonstration = demonstration
        self._train = [self.tag(e) for e in train]
        self._eval = [self.tag(e) for e in eval_]

    def tag(self, example: Example) -> Example:
        """`example` marked as this domain's: it is played as an episode."""
        if example.domain != self.name:
            raise ValueError(f"domain {self.name!r} got an example of domain {example.domain!r}")
        return dataclasses.replace(example, meta={**example.meta, EPISODES_KEY: self})

    def environment(self, example: Example) -> Environment:
        return self._environment(example)

    def demonstration(self, example: Example) -> list[str] | None:
        """The model turns of a correct episode (SFT data), when the domain knows them."""
        return None if self._demonstration is None else list(self._demonstration(example))

    def train_examples(self) -> list[Example]:
        return list(self._train)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def reward(self, completion: str, example: Example) -> float:
        env = self.environment(example)
        env.reset(example)
        env.step(Turn(completion))
        return float(env.reward())


def _rows(fn: Callable[[], list[Any]], name: str, where: str) -> list[Example]:
    out = []
    for i, row in enumerate(fn()):
        if isinstance(row, dict):
            try:
                row = Example(**{"domain": name, **row})
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: row {i} is not a valid example: {e}") from e
        if not isinstance(row, Example):
            raise ValueError(f"{where}: row {i} is a {type(row).__name__}, expected an Example or a dict")
        out.append(row)
    return out


def env_domain_from_module(module: ModuleType, name: str, where: str, params: dict | None = None) -> EnvDomain:
    """The EnvDomain a user file defines (module docstring); `params` go to `environment`."""
    missing = [f for f in ("environment", "train_examples", "eval_examples") if not callable(getattr(module, f, None))]
    if missing:
        raise ValueError(f"{where} defines `environment` but not {', '.join(missing)}")
    limits = getattr(module, "limits", None)
    if isinstance(limits, dict):
        try:
            limits = EpisodeLimits(**limits)
        except TypeError as e:
            raise ValueError(f"{where}: bad `limits`: {e}; fields: "
                             f"{[f.name for f in dataclasses.fields(EpisodeLimits)]}") from None
    if limits is not None and not isinstance(limits, EpisodeLimits):
        raise ValueError(f"{where}: `limits` must be a dict or an EpisodeLimits")
    params = dict(params or {})
    factory = module.environment
    return EnvDomain(name, _rows(module.train_examples, name, f"{where} train_examples()"),
                     _rows(module.eval_examples, name, f"{where} eval_examples()"),
                     lambda ex: factory(ex, **params) if params else factory(ex), limits,
                     getattr(module, "demonstration", None))
