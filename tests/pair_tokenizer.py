"""Teachers with another tokenizer than the character-level student's, for tests: a tokenizer that
cuts text into pairs of characters (the two agree on a boundary only every other character), and
a model moved under a tokenizer whose characters have other ids."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mopd.models.tiny import BOS, CHARSET, CHAT_TEMPLATE, CHAT_TOKENS, EOS, PAD, char_tokenizer, tiny_model


def pair_tokenizer() -> PreTrainedTokenizerFast:
    """Pairs of characters (an odd last one alone), the tiny tokenizer's specials and chat template."""
    chars = list(dict.fromkeys(CHARSET))
    vocab = {t: i for i, t in enumerate([PAD, BOS, EOS, *CHAT_TOKENS, *chars, *(a + b for a in chars for b in chars)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(r"[\s\S]{1,2}"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   additional_special_tokens=list(CHAT_TOKENS))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def permuted(tok, model):
    """The same model under a tokenizer whose characters have other ids (specials stay): another
    vocabulary with the same segmentation, so the teacher is exactly as good as `model`."""
    ptok = char_tokenizer(CHARSET[::-1])
    perm = torch.tensor([tok.convert_tokens_to_ids(ptok.convert_ids_to_tokens(i)) for i in range(len(ptok))])
    pmodel = tiny_model(ptok, seed=0)
    state = {k: (v[perm] if v.shape[:1] == (len(tok),) and "embed" in k or "lm_head" in k else v)
             for k, v in model.state_dict().items()}
    pmodel.load_state_dict(state)
    return ptok, pmodel
