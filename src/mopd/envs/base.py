"""The environment interface of agentic (multi-turn, tool-using) domains.

An agentic domain provides, in place of a single prompt per example, an environment that an
episode plays against:

    env = domain.environment(example)
    opening = env.reset(example)          # the opening prompt or messages, and the tools offered
    obs = env.step(Turn(text, tool_call)) # the model's turn -> next observation, or the end
    r = env.reward()                      # the episode's reward, once it has ended

The episode driver (`mopd.rollout.episodes`) renders the opening, has the model generate a
turn, parses the turn's tool call (`mopd.envs.format`), hands it to `step` and appends the
rendered observation to the token history, until the environment says `done` or a limit
(`EpisodeLimits`) ends the episode. Environments never see token ids: they deal in text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mopd.domains.base import Example


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One model turn: its text (special tokens stripped) and the tool call parsed from it, if any."""

    text: str
    tool_call: ToolCall | None = None


@dataclass(frozen=True)
class Observation:
    """The environment's answer to a turn. `done`: the episode is over (no observation is
    shown). `error`: what went wrong (a tool that raised, timed out...), counted in the
    metrics; the text still goes to the model, which may recover on its next turn."""

    text: str = ""
    done: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Opening:
    """How an episode starts: exactly one of `prompt` (plain text) or `messages` (chat turns),
    and the tools on offer as JSON-schema function specs (`Tool.spec()`)."""

    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    tools: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("an episode opening needs exactly one of 'prompt' or 'messages'")


@runtime_checkable
class Environment(Protocol):
    def reset(self, example: Example) -> Opening: ...

    def step(self, turn: Turn) -> Observation: ...

    def reward(self) -> float: ...


@dataclass(frozen=True)
class EpisodeLimits:
    """Bounds on one episode. A turn longer than `sampling.max_new_tokens`, an episode that
    reaches `max_turns` model turns without ending, or one whose next observation would take
    it past `max_tokens` (prompt, turns and observations together) ends unfinished."""

    max_turns: int = 4
    max_tokens: int = 256
    max_observation_tokens: int = 64  # longer observations are cut (and say so)
    step_timeout_s: float = 30.0  # reset / step / reward past this: the episode ends with an env error

    def __post_init__(self) -> None:
        if min(self.max_turns, self.max_tokens, self.max_observation_tokens) < 1 or self.step_timeout_s <= 0:
            raise ValueError(f"episode limits must be positive, got {self}")


@runtime_checkable
class EpisodeSource(Protocol):
    """What an agentic domain adds to a Domain: a fresh environment per episode, and limits."""

    limits: EpisodeLimits

    def environment(self, example: Example) -> Environment: ...

    def demonstration(self, example: Example) -> list[str] | None:
        """The model's turns of a correct episode of `example`, for SFT; None when there are none."""
        ...


EPISODES_KEY = "episodes"  # Example.meta key holding the example's EpisodeSource


def episode_source(example: Example) -> EpisodeSource | None:
    """The source of episodes of an agentic example; None for a single-turn one.

    Agentic domains tag each of their examples with themselves, so every code path that
    handles examples (the mixture, overlapped chunks, evaluation, `mopd check`) can send
    them through the episode driver without being told which domains are agentic.
    """
    return example.meta.get(EPISODES_KEY)
