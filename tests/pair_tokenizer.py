"""A tokenizer that cuts text into pairs of characters, for teachers with another tokenizer
than the character-level student's: the two agree on a boundary only every other character."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mopd.models.tiny import BOS, CHARSET, CHAT_TEMPLATE, CHAT_TOKENS, EOS, PAD


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
