"""A shared prefix run once through the trunk gives the plain forward's log-probs and gradients."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mopd.models.logprobs import token_logprobs
from mopd.models.shared_prefix import can_share_prefix, shared_prefix_length, trunk_hidden
from mopd.models.tiny import char_tokenizer, tiny_model

PREFIX = 9


def batch(vocab: int, seed: int = 0, rows: int = 4, whole_prompt: bool = False):
    """Right-padded rows: a common prefix, then each row's own prompt tail and completion."""
    g = torch.Generator().manual_seed(seed)
    T = 20
    ids = torch.randint(7, vocab, (rows, T), generator=g)
    ids[:, :PREFIX] = ids[0, :PREFIX]
    attn = torch.ones_like(ids)
    attn[1, 15:] = 0  # padded rows
    attn[3, 17:] = 0
    ids[attn == 0] = 0
    prompt_len = PREFIX if whole_prompt else PREFIX + 3  # whole_prompt: completions start right after it
    gen = torch.zeros_like(ids, dtype=torch.bool)
    gen[:, prompt_len:] = True
    gen &= attn.bool()
    return ids, attn, gen


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("whole_prompt", [False, True])
def test_values_and_gradients_match_the_plain_forward(whole_prompt):
    tok = char_tokenizer()
    model = tiny_model(tok, seed=1)
    ids, attn, gen = batch(len(tok), seed=2, whole_prompt=whole_prompt)
    assert shared_prefix_length(ids, attn) == PREFIX
    w = torch.randn(ids.shape, generator=torch.Generator().manual_seed(3))
    out = {}
    for share in (0, 4):
        model.zero_grad()
        lp = token_logprobs(model, ids, attn, gen, with_entropy=True, share_prefix=share)
        (lp.logprobs * w).sum().backward()
        out[share] = (lp.logprobs.detach(), lp.entropy, grads(model))
    torch.testing.assert_close(out[4][0], out[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[4][1], out[0][1], atol=1e-5, rtol=1e-5)
    assert (out[4][0][gen] != 0).all()  # it really scored every generated token
    for a, b in zip(out[4][2], out[0][2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_prefix_runs_once():
    """The trunk sees the prefix as one row, then only the rest of every row."""
    tok = char_tokenizer()
    model = tiny_model(tok)
    ids, attn, _ = batch(len(tok))
    embedded, layered = [], []
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, a, o: embedded.append(tuple(a[0].shape))),
             model.model.layers[0].register_forward_hook(lambda m, a, o: layered.append(tuple(a[0].shape)))]
    with torch.no_grad():
        shared = trunk_hidden(model.model, ids, attn, min_prefix=4)
        assert embedded == [(4, 20)]  # every row embedded once
        assert layered == [(1, PREFIX, 64), (4, 20 - PREFIX, 64)]  # the prefix once, then the rest of each row
        plain = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
    for h in hooks:
        h.remove()
    real = attn.bool()
    torch.testing.assert_close(shared[real], plain[real], atol=1e-5, rtol=1e-5)


def test_short_or_absent_prefix_takes_the_plain_forward():
    tok = char_tokenizer()
    model = tiny_model(tok)
    ids, attn, _ = batch(len(tok))
    calls = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    with torch.no_grad():
        trunk_hidden(model.model, ids, attn, min_prefix=PREFIX + 1)  # prefix too short
        trunk_hidden(model.model, ids[:1], attn[:1], min_prefix=1)  # one row
        trunk_hidden(model.model, ids, attn, min_prefix=0)  # switched off
    hook.remove()
    assert calls == [4, 1, 4]


def test_prefix_length_stops_at_the_first_difference_or_padding():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 9], [5, 6, 7, 8, 0]])
    assert shared_prefix_length(ids, torch.ones_like(ids)) == 3
    attn = torch.ones_like(ids)
    attn[:, 2:] = 0
    assert shared_prefix_length(ids, attn) == 2
    assert shared_prefix_length(torch.tensor([[3, 4], [4, 4]]), torch.ones(2, 2)) == 0


def test_another_architecture_and_gradient_checkpointing():
    cfg = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    ids, attn, gen = batch(40, seed=5)
    with torch.no_grad():
        ref = token_logprobs(model, ids, attn, gen, share_prefix=0).logprobs
        got = token_logprobs(model, ids, attn, gen, share_prefix=4).logprobs
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert can_share_prefix(model.model)
    model.gradient_checkpointing_enable()
    model.train()
    assert not can_share_prefix(model.model)  # the cache is switched off inside such a forward
