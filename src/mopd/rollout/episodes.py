"""Episode rollouts: multi-turn, tool-using episodes as one token sequence each.

Engine-agnostic, over `RolloutEngine.generate`: the prompt of a continuing episode is its
whole token history, so the transformers and vLLM engines both run episodes unchanged. Each
round, every live episode generates its next turn in one `generate` call; episodes that
ended drop out. The ids the model sampled are kept exactly as sampled (the history is never
re-tokenized): only each new observation segment is rendered and appended
(`mopd.envs.format`). `gen_mask` is True on the model's own tokens and nowhere else, and
`sample_logprobs` holds the sampling log-prob of each of them; teachers then score the whole
trajectory in one pass, and the loss and its IS mask see model tokens only.

Faults cost an episode, never the run: a turn whose tool call does not parse is answered with
an error observation; an environment whose reset / step / reward raises or hangs ends its
episode (reward 0); all of it is counted in `EpisodeStats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.envs.base import EpisodeLimits, Observation, Opening, Turn, episode_source
from mopd.envs.format import EpisodeRenderer, ToolParseError, parse_tool_call
from mopd.envs.tools import CallFailed, call_all_guarded
from mopd.rollout.engine import Completion, RolloutEngine
from mopd.rollout.types import Rollout


@dataclass
class EpisodeStats:
    turns: int = 0  # model turns
    tool_calls: int = 0  # turns whose tool call parsed
    parse_errors: int = 0  # turns that tried a tool call that did not parse
    tool_errors: int = 0  # observations that report an error (tool raised, timed out, output cut...)
    env_errors: int = 0  # the environment itself raised or hung: its episode ended there
    # done | turn_length | max_tokens | max_turns | env_error
    end: str = ""
    last_error: str = ""  # the last fault's message, for logs


@dataclass
class _Episode:
    group: int
    example: Example
    limits: EpisodeLimits
    env: object = None
    ids: list[int] = field(default_factory=list)
    gen_mask: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_len: int = 0
    messages: list[dict] | None = None  # chat episodes: the history the template renders
    tools: tuple = ()
    turn: Turn | None = None
    parse_error: str | None = None
    stop_text: str = ""
    stats: EpisodeStats = field(default_factory=EpisodeStats)

    def append(self, ids: list[int], generated: bool, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.gen_mask += [generated] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)

    def end(self, why: str) -> None:
        self.stats.end = why

    @property
    def live(self) -> bool:
        return not self.stats.end


def run_episodes(engine: RolloutEngine, tokenizer, items: list[tuple[int, Example]], max_new_tokens: int,
                 temperature: float = 1.0, generator: torch.Generator | None = None) -> list[Rollout]:
    """One episode per (group, example) of an agentic domain, played to its end; `max_new_tokens`
    bounds each turn. Rollouts come back in the order of `items`."""
    renderer = EpisodeRenderer(tokenizer)
    episodes = _start_all(items, renderer, tokenizer)
    while live := [e for e in episodes if e.live]:
        budgets = [min(max_new_tokens, e.limits.max_tokens - len(e.ids)) for e in live]
        outs = engine.generate([e.ids for e in live], max(budgets), temperature, generator)
        for e, c, budget in zip(live, outs, budgets):
            _take_turn(e, c, budget, budget < max_new_tokens, tokenizer)
        stepping = [e for e in live if e.live]
        for e, obs in zip(stepping, _step_all(stepping)):
            _observe(e, obs, renderer, tokenizer)
    return _finish_all(episodes, tokenizer)


def _start_all(items: list[tuple[int, Example]], renderer: EpisodeRenderer, tokenizer) -> list[_Episode]:
    episodes = []
    for g, ex in items:
        source = episode_source(ex)
        episodes.append(_Episode(g, ex, source.limits))
    # Building and resetting environments may do real work (copy a repository...): concurrently.
    timeout = max(e.limits.step_timeout_s for e in episodes) if episodes else 0.0
    openings = call_all_guarded([lambda e=e: _reset(e) for e in episodes], timeout, "environment reset")
    for e, opening in zip(episodes, openings):
        try:
            if isinstance(opening, CallFailed):
                raise opening
            e.ids, e.messages = renderer.opening(opening)
            e.tools = opening.tools
        except (CallFailed, ValueError, TypeError) as err:
            # No episode without an opening: the row is the example's plain prompt, nothing generated.
            e.ids, e.messages = _fallback_prompt(e.example, tokenizer), None
            e.stats.env_errors += 1
            e.end("env_error")
            e.stats.last_error = str(err)
        e.gen_mask, e.logprobs, e.prompt_len = [False] * len(e.ids), [0.0] * len(e.ids), len(e.ids)
        if e.live and len(e.ids) >= e.limits.max_tokens:
            e.end("max_tokens")
    return episodes


def _reset(e: _Episode) -> Opening:
    e.env = episode_source(e.example).environment(e.example)
    opening = e.env.reset(e.example)
    if not isinstance(opening, Opening):
        raise TypeError(f"reset() returned {type(opening).__name__}, not an Opening")
    return opening


def _fallback_prompt(example: Example, tokenizer) -> list[int]:
    try:
        ids = render_prompt(example, tokenizer)
    except Exception:  # noqa: BLE001 - any rendering failure: a one-token placeholder row
        ids = []
    return ids or [tokenizer.pad_token_id]


def _take_turn(e: _Episode, c: Completion, budget: int, token_bound: bool, tokenizer) -> None:
    ids, lps = c.token_ids[:budget], c.logprobs[:budget]
    e.append(ids, True, lps)
    e.stats.turns += 1
    if not c.finished or len(c.token_ids) > budget:
        e.end("max_tokens" if token_bound else "turn_length")
        return
    text = tokenizer.decode(ids, skip_special_tokens=True)
    e.stop_text = tokenizer.decode(ids[-1:], skip_special_tokens=False)
    e.parse_error = None
    try:
        e.turn = Turn(text, parse_tool_call(text))
    except ToolParseError as err:
        e.turn, e.parse_error = Turn(text), str(err)


def _step_all(episodes: list[_Episode]) -> list[Observation | CallFailed]:
    calls = [e for e in episodes if e.parse_error is None]
    timeout = max((e.limits.step_timeout_s for e in calls), default=0.0)
    results = iter(call_all_guarded([lambda e=e: e.env.step(e.turn) for e in calls], timeout, "environment step"))
    out = []
    for e in episodes:
        if e.parse_error is not None:  # answered here: the environment never sees a broken call
            e.stats.parse_errors += 1
            out.append(Observation(f"error: {e.parse_error}", error=e.parse_error))
            continue
        e.stats.tool_calls += e.turn.tool_call is not None
        out.append(next(results))
    return out


def _observe(e: _Episode, obs, renderer: EpisodeRenderer, tokenizer) -> None:
    if not isinstance(obs, Observation):
        e.stats.env_errors += 1
        e.stats.last_error = str(obs) if isinstance(obs, CallFailed) else f"step() returned {type(obs).__name__}"
        e.end("env_error")
        return
    if obs.error is not None:
        e.stats.last_error = str(obs.error)
        e.stats.tool_errors += e.parse_error is None
    if obs.done:
        e.end("done")
        return
    if e.stats.turns >= e.limits.max_turns:
        e.end("max_turns")
        return
    text = cap_text(str(obs.text), e.limits.max_observation_tokens, tokenizer)
    segment = renderer.observation(text, e.messages, e.turn.text, e.turn.tool_call, e.stop_text, e.tools)
    if len(e.ids) + len(segment) >= e.limits.max_tokens:  # no room left for a model token after it
        e.end("max_tokens")
        return
    e.append(segment, False)


def cap_text(text: str, max_tokens: int, tokenizer) -> str:
    """`text` cut to `max_tokens` tokens (saying so). The characters are cut first, so a
    megabyte of output never reaches the tokenizer."""
    short = text[: max_tokens * 32]
    ids = tokenizer(short, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens and len(short) == len(text):
        return text
    return tokenizer.decode(ids[:max_tokens]) + " [cut]"


def _finish_all(episodes: list[_Episode], tokenizer) -> list[Rollout]:
    scoring = [e for e in episodes if e.stats.end != "env_error"]
    timeout = max((e.limits.step_timeout_s for e in scoring), default=0.0)
    rewards = dict(zip(map(id, scoring), call_all_guarded([e.env.reward for e in scoring], timeout,
                                                          "environment reward")))
    out = []
    for e in episodes:
        reward = _as_reward(rewards.get(id(e), 0.0))
        if reward is None:  # a reward that raised, hung or is not a finite number: 0
            e.stats.env_errors += 1
            e.stats.last_error = str(rewards[id(e)])
            reward = 0.0
        out.append(Rollout(
            domain=e.example.domain, token_ids=e.ids, gen_mask=e.gen_mask, sample_logprobs=e.logprobs,
            prompt_len=e.prompt_len, example=e.example, group=e.group, finished=e.stats.end == "done",
            reward=float(reward), text=tokenizer.decode(e.ids[e.prompt_len:], skip_special_tokens=True),
            episode=e.stats))
    return out


def _as_reward(value) -> float | None:
    try:
        r = float(value)
    except (TypeError, ValueError):
        return None
    return r if math.isfinite(r) else None
