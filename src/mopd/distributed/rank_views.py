"""What one training process sees of shared things: its share of each global batch, the
wrapped model (DDP, FSDP2, DeepSpeed) as the trunk + head that `token_logprobs` expects, and
the optimizer inside accelerate's wrapper."""

from __future__ import annotations

from types import SimpleNamespace


class RankShard:
    """This rank's share of every global batch: rows rank, rank + world, ... of the same draw.

    The mixture sampler returns a batch grouped by domain, so the strided slice gives every rank
    the same mix. Everything else (state, shares) is the shared sampler's.
    """

    def __init__(self, sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, rank, world

    def next_batch(self, n: int):
        return self.sampler.next_batch(n)[self.rank::self.world]

    def __getattr__(self, name):
        return getattr(self.sampler, name)


class ThroughWrapper:
    """A wrapped model (DDP, FSDP2, DeepSpeed) seen by `token_logprobs` as a trunk and a head.

    The trunk call runs the wrapper's own forward, where gradient synchronisation and parameter
    gathering are hooked, and hands back the final hidden state; the head then turns it into
    log-probs a chunk of positions at a time, so memory does not grow with batch x length x vocab.
    With `head_outside=False` there is no separate head: `token_logprobs` takes the full logits
    of the wrapper's forward.
    """

    def __init__(self, wrapped, inner, head_outside: bool = True):
        self.wrapped, self.inner, self.head_outside = wrapped, inner, head_outside
        self.config = inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings() if self.head_outside else None

    def get_decoder(self):
        return self._trunk

    def _trunk(self, input_ids, attention_mask):
        # logits_to_keep=1: the head inside the forward runs on one position, not all of them.
        out = self.wrapped(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                           logits_to_keep=1, use_cache=False)
        return SimpleNamespace(last_hidden_state=out.hidden_states[-1])

    def __call__(self, input_ids, attention_mask, **kw):  # models without a separable head; the probe
        return self.wrapped(input_ids=input_ids, attention_mask=attention_mask, **kw)


def inner_optimizer(optimizer):
    """The optimizer itself: accelerate's AcceleratedOptimizer wraps the one it was given."""
    return getattr(optimizer, "optimizer", optimizer)
