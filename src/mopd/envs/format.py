"""How episodes look in tokens: the opening, tool calls in a model turn, observation segments.

Two formats, picked from the tokenizer:

- **Chat template with tool support** (its source mentions `tools`: Qwen, Llama 3.1, Hermes...):
  the opening is `apply_chat_template(messages, tools=...)`, a tool call is JSON in
  `<tool_call>...</tool_call>` (or a bare `{"name": ..., "arguments": ...}` object), and an
  observation is a `tool` message rendered by the template.
- **Plain text** (no template, or one without tools: the tiny char-level models), documented
  in docs/agentic.md:
      tool call     a turn ending in `call:NAME(ARGS)`; ARGS is a JSON object of arguments,
                    or plain text bound to the tool's only parameter
      observation   `\nobs:TEXT\n` after the model's end-of-turn token (plain prompts), or a
                    `user` message `obs:TEXT` rendered by the template (chat messages)
  With chat messages, the tools are listed in a system message in this format.

Only the new segment is ever tokenized: an observation's ids are the template's rendering of
the conversation with the new message, minus its rendering without it, from the model's
end-of-turn token on. The sampled ids of earlier turns are never re-tokenized.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mopd.envs.base import Opening, ToolCall

_PLAIN_CALL = re.compile(r"call:\s*([A-Za-z_][\w.-]*)\((.*)\)\s*$", re.DOTALL)
_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
OBS_PREFIX = "obs:"


class ToolParseError(ValueError):
    """The turn tries to call a tool (it has `call:` or `<tool_call>`) but the call does not parse."""


def _json_call(raw: str) -> ToolCall:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ToolParseError(f"tool call is not valid JSON ({e.msg})") from None
    if isinstance(obj, list) and obj:
        obj = obj[0]  # one call per turn: the first
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ToolParseError("tool call JSON needs a string 'name'")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ToolParseError("tool call 'arguments' is a string that is not JSON") from None
    if not isinstance(args, dict):
        raise ToolParseError("tool call 'arguments' must be an object")
    return ToolCall(obj["name"], args)


def _plain_call(text: str) -> ToolCall:
    m = _PLAIN_CALL.match(text[text.rfind("call:"):])
    if m is None:
        raise ToolParseError("a plain-text tool call is call:NAME(ARGS), at the end of the turn")
    name, raw = m.group(1), m.group(2).strip()
    if not raw.startswith("{"):
        return ToolCall(name, {"input": raw} if raw else {})
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ToolParseError(f"call arguments are not a JSON object ({e.msg})") from None
    if not isinstance(args, dict):
        raise ToolParseError("call arguments must be a JSON object")
    return ToolCall(name, args)


def parse_tool_call(text: str) -> ToolCall | None:
    """The turn's tool call; None when it makes none (a final answer); ToolParseError when it
    tries and fails. Both formats are accepted whatever the tokenizer."""
    if "<tool_call>" in text:
        m = _TAGGED.search(text)
        return _json_call(m.group(1).strip())
    stripped = text.strip()
    if stripped.startswith("{") and '"name"' in stripped:
        return _json_call(stripped)
    if "call:" in text:
        return _plain_call(text)
    return None


def describe_tools(tools: tuple[dict, ...]) -> str:
    """The plain-text tool list for chat templates without tool support."""
    lines = ["You can call a tool by ending your turn with call:NAME(ARGS). Tools:"]
    for t in tools:
        f = t.get("function", t)
        params = ", ".join(f.get("parameters", {}).get("properties", {}))
        lines.append(f"- {f['name']}({params}): {f.get('description', '')}".rstrip(": "))
    return "\n".join(lines)


class EpisodeRenderer:
    """Renders one tokenizer's episodes (module docstring)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        template = getattr(tokenizer, "chat_template", None)
        self.template_tools = isinstance(template, str) and "tools" in template

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _template(self, messages: list[dict], tools, generation: bool, tokenize: bool):
        kw = {"tools": list(tools)} if tools and self.template_tools else {}
        out = self.tok.apply_chat_template(messages, add_generation_prompt=generation, tokenize=tokenize, **kw)
        return list(out["input_ids"] if hasattr(out, "keys") else out) if tokenize else out

    def opening(self, opening: Opening) -> tuple[list[int], list[dict] | None]:
        """Prompt ids, and the message history a chat episode keeps for rendering observations."""
        if opening.messages is None:
            return list(self.tok(opening.prompt)["input_ids"]), None
        if not getattr(self.tok, "chat_template", None):
            raise ValueError("an episode opens with chat messages but the tokenizer has no chat template")
        messages = [dict(m) for m in opening.messages]
        if opening.tools and not self.template_tools:
            listing = describe_tools(opening.tools)
            if messages and messages[0]["role"] == "system":
                messages[0]["content"] = f"{messages[0]['content']}\n\n{listing}"
            else:
                messages.insert(0, {"role": "system", "content": listing})
        return self._template(messages, opening.tools, True, True), messages

    def observation(self, text: str, messages: list[dict] | None, turn_text: str, call: ToolCall | None,
                    stop_text: str, tools=()) -> list[int]:
        """Ids of the observation segment that follows the model's turn (ending in `stop_text`)."""
        if messages is None:
            return self._ids(f"\n{OBS_PREFIX}{text}\n")
        said: dict[str, Any] = {"role": "assistant", "content": turn_text}
        if call is not None and self.template_tools:
            said["tool_calls"] = [{"type": "function", "function": {"name": call.name, "arguments": call.arguments}}]
        messages.append(said)
        before = self._template(messages, tools, False, False)
        messages.append({"role": "tool", "content": text} if self.template_tools
                        else {"role": "user", "content": f"{OBS_PREFIX}{text}"})
        after = self._template(messages, tools, True, False)
        if not after.startswith(before):
            raise ValueError("the chat template renders earlier turns differently once an observation follows "
                             "them; mopd cannot append the observation without re-tokenizing the history")
        # The model's turn ended at its stop token; what the template writes after it (a newline,
        # the tool message, the next assistant header) is the segment.
        cut = before.rfind(stop_text) + len(stop_text) if stop_text and stop_text in before else len(before)
        return self._ids(after[cut:])
