"""The transformers rollout engine: sampling log-probs, EOS, length limit, left padding."""

import torch

from mopd.models.logprobs import token_logprobs
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.types import Rollout, collate


def make(seed=0):
    tok = char_tokenizer()
    return tok, tiny_model(tok, seed=seed)


def rescore(model, prompts, completions, temperature):
    rs = [Rollout.from_completion("d", p, c.token_ids, c.logprobs) for p, c in zip(prompts, completions)]
    b = collate(rs, 0)
    with torch.no_grad():
        lp = token_logprobs(model, b.input_ids, b.attention_mask, b.gen_mask, temperature=temperature).logprobs
    return b, lp


def test_sampling_logprobs_equal_trainer_logprobs_with_left_padding():
    tok, model = make()
    prompts = [tok(p)["input_ids"] for p in ("rev:abc=", "a:1=", "sort:98765=")]
    engine = HFRolloutEngine(model, tok.pad_token_id, tok.eos_token_id)
    for temperature in (1.0, 0.7):
        outs = engine.generate(prompts, 6, temperature, torch.Generator().manual_seed(1))
        b, lp = rescore(model, prompts, outs, temperature)
        torch.testing.assert_close(b.sample_logprobs[b.gen_mask], lp[b.gen_mask], atol=1e-4, rtol=1e-4)


def test_stops_at_eos_and_at_the_length_limit():
    tok, model = make(1)
    _, free = make(2)

    class AlwaysEOS(torch.nn.Module):
        def forward(self, h):
            out = torch.full((*h.shape[:-1], len(tok)), -1e9)
            out[..., tok.eos_token_id] = 0.0
            return out
    free.lm_head = AlwaysEOS()  # only EOS has a finite logit
    free.config.tie_word_embeddings = False
    engine = HFRolloutEngine(free, tok.pad_token_id, [tok.eos_token_id])
    outs = engine.generate([tok("ab")["input_ids"], tok("x")["input_ids"]], 5)
    assert all(o.token_ids == [tok.eos_token_id] and o.finished for o in outs)
    assert all(abs(o.logprobs[0]) < 1e-6 for o in outs)
    engine = HFRolloutEngine(model, tok.pad_token_id, [])  # no EOS: runs to the limit
    outs = engine.generate([tok("ab")["input_ids"]] * 3, 4)
    assert all(len(o.token_ids) == 4 and not o.finished for o in outs)


def test_same_generator_seed_same_samples():
    tok, model = make(3)
    engine = HFRolloutEngine(model, tok.pad_token_id, tok.eos_token_id)
    prompts = [tok("rev:abcd=")["input_ids"]] * 4
    a = engine.generate(prompts, 8, 1.0, torch.Generator().manual_seed(7))
    b = engine.generate(prompts, 8, 1.0, torch.Generator().manual_seed(7))
    c = engine.generate(prompts, 8, 1.0, torch.Generator().manual_seed(8))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
