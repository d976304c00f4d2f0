"""Chunked log-probs against the plain full-logits computation."""

import torch

from mopd.models.logprobs import token_logprobs
from mopd.models.tiny import char_tokenizer, tiny_model


def setup(seed=0):
    tok = char_tokenizer()
    model = tiny_model(tok, seed=seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, len(tok), (3, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 8:] = 0
    pos = torch.zeros_like(ids, dtype=torch.bool)
    pos[:, 5:] = True
    pos[2, 8:] = False
    return model, ids, attn, pos


def plain(model, ids, attn, pos, temperature=1.0):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    out = torch.zeros(ids.shape)
    out[:, 1:] = logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * pos[:, 1:]
    return out, logp


def test_values_match_plain_for_every_chunk_size():
    model, ids, attn, pos = setup()
    ref, _ = plain(model, ids, attn, pos)
    for chunk in (1, 3, 1000):
        got = token_logprobs(model, ids, attn, pos, chunk_size=chunk).logprobs
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_temperature_scales_logits():
    model, ids, attn, pos = setup(1)
    ref, _ = plain(model, ids, attn, pos, temperature=0.7)
    torch.testing.assert_close(token_logprobs(model, ids, attn, pos, temperature=0.7).logprobs, ref,
                               atol=1e-5, rtol=1e-5)


def test_gradients_match_plain():
    model, ids, attn, pos = setup(2)
    w = torch.randn(ids.shape)
    (token_logprobs(model, ids, attn, pos, chunk_size=4).logprobs * w).sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref, _ = plain(model, ids, attn, pos)
    (ref * w).sum().backward()
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_topk_targets_and_entropy_match_plain():
    model, ids, attn, pos = setup(3)
    _, logp = plain(model, ids, attn, pos)
    with torch.no_grad():
        out = token_logprobs(model, ids, attn, pos, topk=4, with_entropy=True, chunk_size=5)
    sel = pos[:, 1:]
    top_v, top_i = logp.topk(4, -1)
    torch.testing.assert_close(out.topk_logprobs[:, 1:][sel], top_v[sel], atol=1e-5, rtol=1e-5)
    assert torch.equal(out.topk_ids[:, 1:][sel], top_i[sel])
    ent = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(out.entropy[:, 1:][sel], ent[sel], atol=1e-5, rtol=1e-5)
    assert (out.topk_ids[~pos] == 0).all()
    targets = torch.randint(0, logp.shape[-1], (*ids.shape, 3))
    with torch.no_grad():
        got = token_logprobs(model, ids, attn, pos, targets=targets).target_logprobs
    want = logp.gather(-1, targets[:, 1:])
    torch.testing.assert_close(got[:, 1:][sel], want[sel], atol=1e-5, rtol=1e-5)


def test_with_grad_one_head_pass_gives_entropy_targets_and_their_gradients():
    # The training path: entropy comes from the same checkpointed head pass as the log-probs.
    model, ids, attn, pos = setup(4)
    targets = torch.randint(0, model.config.vocab_size, (*ids.shape, 3))
    w, w_t = torch.randn(ids.shape), torch.randn((*ids.shape, 3))
    out = token_logprobs(model, ids, attn, pos, targets=targets, with_entropy=True, chunk_size=4,
                         temperature=0.8)
    assert out.entropy is not None and not out.entropy.requires_grad
    ((out.logprobs * w).sum() + (out.target_logprobs * w_t).sum()).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref, logp = plain(model, ids, attn, pos, temperature=0.8)
    sel = pos[:, 1:]
    ref_t = torch.zeros((*ids.shape, 3))
    ref_t[:, 1:] = logp.gather(-1, targets[:, 1:]) * sel[..., None]
    ((ref * w).sum() + (ref_t * w_t).sum()).backward()
    ent = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(out.entropy[:, 1:][sel], ent[sel].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logprobs, ref.detach(), atol=1e-5, rtol=1e-5)
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
