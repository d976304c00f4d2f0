"""The trunk's hidden states of a batch whose rows start with the same tokens, that prefix run once.

Chat rollouts share a lot: every row starts with the chat template's system prompt, and the
rollouts of one prompt (GRPO groups) share the whole prompt. A plain forward computes that
prefix once per row. Here it runs once, as a batch of one; its keys and values are repeated
to every row and the rest of each row runs on top of them as a continuation. Causal attention
makes the prefix's states independent of what follows, so the hidden states are the same
function of the weights as the plain forward's (up to floating-point order), and gradients
flow back through the repeated keys and values into the one prefix pass, summed over rows.

The batch must be right-padded (real tokens first), as `collate` builds it.
"""

from __future__ import annotations

import weakref

import torch

from mopd.models.kv_cache import cache_keyword


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading positions hold the same real token in every row."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    return int(same.long().cumprod(0).sum())


def can_share_prefix(trunk) -> bool:
    """Whether `trunk` is a transformers decoder that continues from a KV cache it is handed."""
    return _cache_key(trunk) is not None


def _cache_key(trunk) -> str | None:
    """The keyword `trunk` takes a KV cache by, when it can continue from one; else None."""
    if not isinstance(trunk, torch.nn.Module) or not hasattr(trunk, "get_input_embeddings"):
        return None
    # Gradient checkpointing turns the cache off inside the forward in training mode.
    if getattr(trunk, "gradient_checkpointing", False) and trunk.training:
        return None
    return cache_keyword(trunk)


def trunk_hidden(trunk, input_ids: torch.Tensor, attention_mask: torch.Tensor, min_prefix: int = 16):
    """The trunk's last hidden state [B, T, H], computing a shared prefix of >= `min_prefix` tokens once.

    Falls back to the plain forward when the prefix is shorter, the batch has one row, or the
    trunk cannot continue from a cache (`can_share_prefix`).
    """
    B, T = input_ids.shape
    p = min(shared_prefix_length(input_ids, attention_mask), T - 1) if B > 1 else 0
    key = _cache_key(trunk) if min_prefix > 0 and p >= min_prefix else None
    if key is None:
        return trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if trunk in _cannot_continue:
        return trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    try:
        return _continue_from_prefix(trunk, input_ids, attention_mask, p, key)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AttributeError, IndexError, TypeError, ValueError):
        # Some architectures take a cache but cannot continue a batch from a widened one (hybrid
        # attention / state-space caches, models that return no cache): the plain forward, from now on.
        _cannot_continue.add(trunk)
        return trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


_cannot_continue: "weakref.WeakSet" = weakref.WeakSet()


def _continue_from_prefix(trunk, input_ids, attention_mask, p: int, key: str):
    B = input_ids.shape[0]
    # Embed every row once: one embedding backward (a dense vocab x hidden gradient) instead of two.
    embeds = trunk.get_input_embeddings()(input_ids)
    prefix = trunk(inputs_embeds=embeds[:1, :p], use_cache=True)
    cache = prefix.past_key_values
    repeat = getattr(cache, "batch_repeat_interleave", None)
    if repeat is None:  # a cache class that cannot be widened to the batch
        return trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    repeat(B)
    # Positions continue from p (the default with a cache of length p); the mask covers prefix + rest.
    rest = trunk(inputs_embeds=embeds[:, p:], attention_mask=attention_mask, use_cache=True, **{key: cache})
    return torch.cat([prefix.last_hidden_state.expand(B, -1, -1), rest.last_hidden_state], dim=1)
