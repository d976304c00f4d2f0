"""Character-span alignment of two tokenizations of one string (docs/cross_tokenizer.md).

A tokenization is described by where each token ends in the string: `ends[i]` is the
character position right after token i, or None where token i does not end on a clean
character boundary (a token holding part of a multi-byte character, or one whose text
overlaps the next token's). Two tokenizations agree on a boundary when both have a token
ending there; the spans are the stretches between consecutive agreed boundaries, so each
span is the smallest piece of text that both sides cover with whole tokens. A span is one
token on each side wherever the boundaries agree token for token.

Pure functions over positions and strings: the tokenizers are called elsewhere
(mopd.teachers.cross_tokenizer), and everything here is checked against a brute-force
reference (tests/unit/test_spans.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

Ends = Sequence[int | None]


def ends_from_prefixes(prefix_texts: Sequence[str], text: str) -> list[int | None]:
    """Token i ends at len(prefix_texts[i]) when the first i+1 tokens decode to exactly that
    prefix of `text`; otherwise (a partial character, a decoder that rewrites across tokens)
    it has no clean end and joins the following token's span."""
    return [len(p) if text.startswith(p) else None for p in prefix_texts]


def ends_from_pieces(pieces: Sequence[str], text: str) -> list[int | None] | None:
    """Cumulative lengths when the tokens' texts, decoded one by one, concatenate to `text`
    (character-level and most BPE tokens); None when they do not, and the caller must decode
    prefixes instead (`ends_from_prefixes`)."""
    if "".join(pieces) != text:
        return None
    out, n = [], 0
    for p in pieces:
        n += len(p)
        out.append(n)
    return out


def ends_from_offsets(offsets: Sequence[tuple[int, int]]) -> list[int | None]:
    """Ends from a fast tokenizer's character offsets into the string it tokenized. A token
    whose end lies past the next token's start shares a character with it (a byte-level BPE
    splitting one character in two): no boundary between them."""
    out: list[int | None] = []
    for i, (_, end) in enumerate(offsets):
        nxt = offsets[i + 1][0] if i + 1 < len(offsets) else None
        out.append(end if nxt is None or nxt >= end else None)
    return out


def _effective(ends: Ends, length: int) -> list[int]:
    """Each token's end, a token without one taking the next clean end; the last token always
    ends the string (both sides cover all of it), and ends never go back."""
    out, nxt = [0] * len(ends), length
    for i in range(len(ends) - 1, -1, -1):
        e = ends[i] if i < len(ends) - 1 else length
        if e is not None:
            nxt = min(max(e, 0), length, nxt)
        out[i] = nxt
    return out


def align_spans(student_ends: Ends, teacher_ends: Ends, length: int) -> tuple[list[int], list[int]]:
    """The span index of every student token and of every teacher token.

    Spans are numbered from 0 in text order; both sides have at least one token in every
    span. A token that covers no text (its end equals its predecessor's) joins its
    predecessor's span.
    """
    if not student_ends or not teacher_ends:
        raise ValueError("both tokenizations need at least one token")
    s, t = _effective(student_ends, length), _effective(teacher_ends, length)
    common = sorted(set(s) & set(t))  # contains `length`: both last tokens end there
    return [bisect.bisect_left(common, e) for e in s], [bisect.bisect_left(common, e) for e in t]


def span_sums(values: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """sum(values[b, start:end+1]) at every position, for `start`/`end` of shape [B, T] or
    [B, T, M] (column indices into `values` [B, T]). A one-token span (start == end) returns
    that token's value exactly, so single-token spans reproduce per-token arithmetic bit for bit."""
    B, T = values.shape
    c = torch.nn.functional.pad(values.double().cumsum(-1), (1, 0))  # c[:, j] = sum of the first j
    flat = lambda i: i.reshape(B, -1).long()  # noqa: E731
    total = (c.gather(1, flat(end) + 1) - c.gather(1, flat(start))).reshape(start.shape).to(values.dtype)
    own = values.gather(1, flat(start)).reshape(start.shape)
    return torch.where(start == end, own, total)
