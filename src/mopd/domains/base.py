"""What a domain is: a source of prompts and a reward function (verifier).

A domain is the unit of routing in MOPD: every prompt carries a domain label, and the label
picks the teacher that scores the student's completion and the verifier that rewards it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Example:
    """One domain-tagged prompt row.

    Exactly one of `prompt` (plain text, fed to the model as is) or `messages`
    (chat turns, rendered with the tokenizer's chat template) is set.
    """

    domain: str
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(
                f"an example of domain {self.domain!r} needs exactly one of 'prompt' or 'messages'"
            )


@runtime_checkable
class Verifier(Protocol):
    """Scores one completion (decoded text, special tokens stripped) against its example."""

    def __call__(self, completion: str, example: Example) -> float: ...


@runtime_checkable
class Domain(Protocol):
    """A named prompt source with a fixed train split, a disjoint eval split and a verifier."""

    name: str

    def train_examples(self) -> list[Example]: ...

    def eval_examples(self) -> list[Example]: ...

    def reward(self, completion: str, example: Example) -> float: ...
