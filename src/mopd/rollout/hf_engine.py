"""Rollouts with transformers: batched sampling with a KV cache, on CPU or one GPU.

A short sampling loop over the model's forward rather than `generate()`: we need the
log-prob of each sampled token under the distribution it was drawn from, and asking
`generate()` for all logits would hold a [batch x steps x vocab] tensor.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from mopd.models.kv_cache import cache_keyword
from mopd.rollout.engine import Completion, RolloutEngine, check_prompts, stop_token_ids


class HFRolloutEngine(RolloutEngine):
    """Samples from a transformers causal LM, typically the very model being trained."""

    shares_trainer_weights = True  # sync_weights hands it the trainer's own parameters

    def __init__(self, model, pad_id: int, eos_ids: list[int] | int):
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = torch.tensor(stop_token_ids(eos_ids))

    def sync_weights(self, model) -> None:
        self.model = model  # shares the trainer's parameters: nothing to copy

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[Completion]:
        if not check_prompts(prompts):
            return []
        model = self.model
        was_training = model.training
        model.eval()
        try:
            tokens, logprobs, finished = self._sample(prompts, max_new_tokens, temperature, generator)
        finally:
            model.train(was_training)
        out = []
        for i in range(len(prompts)):
            n = int((~torch.isnan(logprobs[i])).sum())
            out.append(Completion(tokens[i, :n].tolist(), logprobs[i, :n].tolist(), bool(finished[i])))
        return out

    def _sample(self, prompts, max_new_tokens, temperature, generator):
        device = next(self.model.parameters()).device
        if generator is not None and generator.device.type != device.type:
            # multinomial on a GPU needs a generator there: seed one from the (CPU) generator given,
            # so sampling stays a function of it.
            seed = int(torch.randint(2**62, (1,), generator=generator))
            generator = torch.Generator(device).manual_seed(seed)
        B, P = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row ends at the same position
            ids[i, P - len(p):] = torch.tensor(p)
            attn[i, P - len(p):] = 1
        ids, attn = ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        eos = self.eos_ids.to(device)

        cache = {cache_keyword(self.model) or "past_key_values": DynamicCache()}  # filled in place by every forward
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **cache)
        tokens = torch.full((B, max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        logprobs = torch.full((B, max_new_tokens), float("nan"), device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        next_pos = positions[:, -1:] + 1
        for step in range(max_new_tokens):
            logp = torch.log_softmax(out.logits[:, -1].float() / temperature, dim=-1)
            tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
            tokens[:, step] = torch.where(done, self.pad_id, tok)
            logprobs[:, step] = torch.where(done, float("nan"), logp.gather(-1, tok[:, None]).squeeze(-1))
            hit_eos = torch.isin(tok, eos) & ~done
            finished |= hit_eos
            done |= hit_eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=-1)
            out = self.model(input_ids=tokens[:, step:step + 1], attention_mask=attn, position_ids=next_pos,
                             use_cache=True, **cache)
            next_pos = next_pos + 1
        return tokens.cpu(), logprobs.cpu(), finished.cpu()
