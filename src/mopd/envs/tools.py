"""Tools as Python functions, and an environment built from them.

A tool that raises, hangs or prints megabytes must cost the episode one error observation,
never the run: `call_guarded` runs a call in a daemon thread with a time limit and catches
what it raises, and `ToolEnvironment` caps what a tool returns. A thread that hangs is
abandoned, not killed (Python cannot kill threads): tools that run code or programs should
run them in a subprocess with its own limits (`mopd.verifiers.sandbox`).
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mopd.domains.base import Example
from mopd.envs.base import Observation, Opening, ToolCall, Turn


class CallFailed(RuntimeError):
    """A guarded call raised or timed out; the message says which and why."""


def call_guarded(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """`fn()`, or CallFailed when it raises or runs past `timeout_s`."""
    (out,) = call_all_guarded([fn], timeout_s, what)
    if isinstance(out, CallFailed):
        raise out
    return out


@dataclass
class Tool:
    """A function the model may call. `parameters` is a JSON schema of its keyword arguments;
    None: one string parameter per argument of `fn`."""

    name: str
    fn: Callable[..., Any]
    description: str = ""
    parameters: dict[str, Any] | None = None

    def param_names(self) -> list[str]:
        if self.parameters is not None:
            return list(self.parameters.get("properties", {}))
        return [p for p in inspect.signature(self.fn).parameters]

    def spec(self) -> dict[str, Any]:
        """The OpenAI / chat-template function spec of this tool."""
        params = self.parameters or {"type": "object", "required": self.param_names(),
                                     "properties": {p: {"type": "string"} for p in self.param_names()}}
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                  "parameters": params}}


def bind_arguments(tool: Tool, call: ToolCall) -> dict[str, Any]:
    """The call's arguments as keywords; a plain-text call's single `input` binds to the
    tool's only parameter (mopd.envs.format)."""
    args = dict(call.arguments)
    names = tool.param_names()
    if set(args) == {"input"} and names != ["input"] and len(names) == 1:
        return {names[0]: args["input"]}
    return args


@dataclass
class ToolEnvironment:
    """An environment whose tools are Python functions.

    A turn with a tool call runs the tool (`tool_timeout_s`, output cut to `max_output_chars`)
    and shows what it returned; a turn without one is the final answer and ends the episode.
    Subclasses set `tools` in `reset` (usually bound methods over per-episode state) and
    implement `score(final_answer)`.
    """

    tools: list[Tool] = field(default_factory=list)
    tool_timeout_s: float = 10.0
    max_output_chars: int = 4000
    example: Example | None = None
    final: str | None = None  # the final answer, once given

    def opening(self, example: Example) -> Opening:
        return Opening(prompt=example.prompt, messages=example.messages,
                       tools=tuple(t.spec() for t in self.tools))

    def reset(self, example: Example) -> Opening:
        self.example, self.final = example, None
        return self.opening(example)

    def step(self, turn: Turn) -> Observation:
        if turn.tool_call is None:
            self.final = turn.text
            return Observation(done=True)
        return self.run_tool(turn.tool_call)

    def run_tool(self, call: ToolCall) -> Observation:
        tool = next((t for t in self.tools if t.name == call.name), None)
        if tool is None:
            names = ", ".join(t.name for t in self.tools)
            return Observation(f"error: no tool {call.name}; tools: {names}", error="unknown tool")
        try:
            args = bind_arguments(tool, call)
            out = call_guarded(lambda: tool.fn(**args), self.tool_timeout_s, f"tool {tool.name}")
        except CallFailed as e:
            return Observation(f"error: {e}", error=str(e))
        text = out if isinstance(out, str) else repr(out)
        if len(text) > self.max_output_chars:
            # The text is cut here, before anything tokenizes it: a tool that prints megabytes
            # costs one string slice, not a megabyte through the tokenizer.
            return Observation(text[: self.max_output_chars] + " [cut]",
                               error=f"tool {tool.name} output {len(text)} chars, cut to {self.max_output_chars}")
        return Observation(text)

    def reward(self) -> float:
        return 0.0 if self.final is None else float(self.score(self.final))

    def score(self, final: str) -> float:
        raise NotImplementedError("a ToolEnvironment subclass scores its final answer")


def call_all_guarded(fns: list[Callable[[], Any]], timeout_s: float, what: str) -> list[Any]:
    """Each `fn()` (run concurrently: one slow environment does not hold up the others' steps),
    or the CallFailed saying why it did not return within `timeout_s`."""
    boxes: list[dict[str, Any]] = [{} for _ in fns]
    threads = []
    for fn, box in zip(fns, boxes):
        t = threading.Thread(target=_fill, args=(fn, box), name=f"mopd-{what}", daemon=True)
        t.start()
        threads.append(t)
    deadline = time.monotonic() + timeout_s
    out: list[Any] = []
    for t, box in zip(threads, boxes):
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            out.append(CallFailed(f"{what} timed out after {timeout_s:g} s"))
        elif "error" in box:
            e = box["error"]
            out.append(CallFailed(f"{what} raised {type(e).__name__}: {e}"))
        else:
            out.append(box.get("value"))
    return out


def _fill(fn: Callable[[], Any], box: dict[str, Any]) -> None:
    try:
        box["value"] = fn()
    except BaseException as e:  # noqa: BLE001 - SystemExit / KeyboardInterrupt from user code too
        box["error"] = e
