"""The keyword a transformers model's forward takes its KV cache by.

Newer transformers name it `cache` on some classes and `past_key_values` on others (and
older releases `past_key_values` everywhere), so callers ask the forward they will call.
"""

from __future__ import annotations

import inspect


def cache_keyword(module) -> str | None:
    """`cache` or `past_key_values`, whichever `module.forward` takes; None when it takes neither."""
    forward = getattr(module, "forward", None)
    if forward is None:
        return None
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # builtins, odd wrappers
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None
