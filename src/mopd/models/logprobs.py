"""Per-token log-probs of chosen tokens without a [batch x length x vocab] tensor.

The model's trunk runs once; the output head and log-softmax run only on the positions that
predict generated tokens, a chunk of positions at a time. Peak memory then grows with
chunk x vocab instead of batch x length x vocab. With gradients on and more than one chunk,
each chunk is recomputed in the backward pass (activation checkpointing) so the chunks'
softmax outputs are not all kept alive. Entropy and top-k come from the same pass of the head
as the log-probs (detached), so the training step runs the head once forward (and, with several
chunks, once again in backward) per chunk.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mopd.models.shared_prefix import trunk_hidden


@dataclass
class TokenLogprobs:
    logprobs: torch.Tensor  # [B, T], log p(token_t | <t) at generated positions, 0 elsewhere
    entropy: torch.Tensor | None = None  # [B, T], detached
    topk_ids: torch.Tensor | None = None  # [B, T, k] the model's own top-k (teacher side)
    topk_logprobs: torch.Tensor | None = None  # [B, T, k]
    target_logprobs: torch.Tensor | None = None  # [B, T, k] log-probs of given target ids


# Config keys of models whose forward post-processes the head's output (Gemma 2/3 soft-capping,
# Cohere's logit_scale, Granite's and HyperCLOVA X's logits_scaling...). Soft-capping is close to
# the identity on small logits, so the probe below could miss it: these take the plain path outright.
LOGIT_POSTPROCESSING_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                             "output_multiplier_scale", "lm_head_multiplier", "logits_soft_cap")

_separable: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> head(trunk(x)) == its logits


def _postprocesses_logits(cfg) -> bool:
    configs = [cfg]
    text = getattr(cfg, "get_text_config", None)
    if callable(text) and text() is not cfg:  # multimodal wrappers keep the LM's settings inside
        configs.append(text())
    return any(getattr(c, k, None) not in (None, 1, 1.0, False) for c in configs for k in LOGIT_POSTPROCESSING_KEYS)


def _head_and_trunk(model):
    """(trunk, head) when the model has the standard decoder + output-embedding layout and its
    logits are exactly the head applied to the trunk's last hidden state; else (None, None)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    trunk = model.get_decoder() if hasattr(model, "get_decoder") else None
    if head is None or trunk is None or trunk is model or _postprocesses_logits(getattr(model, "config", None)):
        return None, None
    if not _head_matches_logits(model, head):
        return None, None
    return trunk, head


@torch.no_grad()
def _head_matches_logits(model, head) -> bool:
    """Once per model: does the head on the last hidden state give the forward's own logits?

    Catches architectures that scale, bias or otherwise transform logits in ways no config key
    names. A mismatch sends the model down the plain (full-logits) path, which is always exact.
    """
    key = model
    if key not in _separable:
        ids = torch.arange(1, 5, device=head.weight.device)[None] % max(2, head.weight.shape[0])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        try:
            mine = head(out.hidden_states[-1]).float().log_softmax(-1)
        except (RuntimeError, TypeError, IndexError):  # a head that needs more than the last hidden state
            _separable[key] = False
            return False
        theirs = out.logits.float().log_softmax(-1)
        _separable[key] = mine.shape == theirs.shape and bool(torch.allclose(mine, theirs, atol=1e-3, rtol=0))
    return _separable[key]


def _chunk_stats(head, hidden, tokens, targets, temperature, topk, want_entropy):
    """One chunk of positions: log-probs of `tokens` (and of `targets`), plus the detached
    entropy and top-k, all from one pass of the output head."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, tokens[:, None]).squeeze(-1)
    tgt = logp.gather(-1, targets) if targets is not None else None
    with torch.no_grad():  # diagnostics and teacher signals: no gradient, nothing saved for backward
        ent = -logp.exp().mul_(logp).sum(-1) if want_entropy else None
        top = logp.topk(topk, dim=-1) if topk else None
    return picked, tgt, ent, top.values if top is not None else None, top.indices if top is not None else None


def token_logprobs(
    model,
    batch_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    *,
    temperature: float = 1.0,
    topk: int = 0,
    targets: torch.Tensor | None = None,
    with_entropy: bool = False,
    chunk_size: int = 1024,
    share_prefix: int = 16,
) -> TokenLogprobs:
    """Log-probs of `batch_ids` at `positions` (bool [B, T], entry 0 must be False).

    `targets` ([B, T, k] ids) asks for the log-probs of those ids too (student side of the
    top-k loss); `topk` asks for the model's own top-k ids and log-probs (teacher side).
    A prefix of >= `share_prefix` tokens that every row starts with (a system prompt, a GRPO
    group's prompt) runs through the trunk once (mopd.models.shared_prefix; 0: never).
    """
    B, T = batch_ids.shape
    dev = batch_ids.device
    pred = positions[:, 1:]  # hidden state t-1 predicts token t
    tokens = batch_ids[:, 1:][pred]
    tgt = targets[:, 1:][pred] if targets is not None else None
    trunk, head = _head_and_trunk(model)
    if trunk is not None:
        hidden = trunk_hidden(trunk, batch_ids, attention_mask, min_prefix=share_prefix)
        hidden = hidden[:, :-1][pred]
    else:  # generic fallback: full logits (memory B x T x V)
        logits = model(input_ids=batch_ids, attention_mask=attention_mask).logits
        hidden, head = logits[:, :-1][pred], torch.nn.Identity()

    lps, tgts, ents, tk_ids, tk_lps = [], [], [], [], []
    for s in range(0, tokens.shape[0], chunk_size):
        h, tok = hidden[s:s + chunk_size], tokens[s:s + chunk_size]
        tg = tgt[s:s + chunk_size] if tgt is not None else None
        args = (head, h, tok, tg, temperature, topk, with_entropy)
        if torch.is_grad_enabled() and h.requires_grad and tokens.shape[0] > chunk_size:
            # Recompute this chunk's logits in backward instead of storing them. With one chunk
            # there is nothing to gain: its logits are alive at the forward's peak anyway.
            picked, t_lp, ent, top_v, top_i = checkpoint(_chunk_stats, *args, use_reentrant=False)
        else:
            picked, t_lp, ent, top_v, top_i = _chunk_stats(*args)
        lps.append(picked)
        for parts, x in ((tgts, t_lp), (ents, ent), (tk_lps, top_v), (tk_ids, top_i)):
            if x is not None:
                parts.append(x)

    def scatter(parts, trailing=(), dtype=torch.float32):
        full = torch.zeros((B, T, *trailing), dtype=parts[0].dtype if parts else dtype, device=dev)
        if parts:
            full[:, 1:][pred] = torch.cat(parts)
        return full

    k = targets.shape[-1] if targets is not None else 0
    return TokenLogprobs(
        logprobs=scatter(lps),
        entropy=scatter(ents) if with_entropy else None,
        topk_ids=scatter(tk_ids, (topk,), torch.long) if topk else None,
        topk_logprobs=scatter(tk_lps, (topk,)) if topk else None,
        target_logprobs=scatter(tgts, (k,)) if targets is not None else None,
    )
