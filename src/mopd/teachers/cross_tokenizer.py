"""A teacher with another tokenizer than the student's: it scores text, not the student's ids.

For each row the student's completion is decoded to text, the prompt is rendered with the
teacher's own chat template and tokenizer, the completion text is tokenized by the teacher,
and the wrapped teacher (hf, vllm or remote) scores that. Its log-probs come back onto the
student's tokens by character spans (mopd.algorithms.spans): every student token carries the
teacher's log-prob of its whole span and the columns the span covers, so the objective can
compare it with the student's log-prob of the same span (docs/cross_tokenizer.md).

The student's end-of-sequence token is matched with the teacher's: both mean "the answer
ends here", and the teacher's log-prob of ending is what the student's stop is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mopd.algorithms.spans import align_spans, ends_from_offsets, ends_from_pieces, ends_from_prefixes
from mopd.data.prompts import render_prompt
from mopd.rollout.types import Rollout, TokenBatch, collate
from mopd.teachers.base import Teacher, TeacherError, TeacherScores


@dataclass
class RowPlan:
    """One row, as the teacher will score it, and how its tokens map onto the student's."""

    columns: list[int]  # the student's generated columns, in order
    student_spans: list[int]  # span index of each of those tokens
    teacher_prompt: list[int]
    teacher_completion: list[int]
    teacher_spans: list[int]  # span index of each teacher completion token


def decoded_ends(tokenizer, ids: list[int], text: str) -> list[int | None]:
    """Where each of `ids` ends in `text`, their decoded string: one decode per token when the
    pieces concatenate to the text, else one decode per prefix (quadratic, but exact)."""
    kw = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)
    pieces = tokenizer.batch_decode([[i] for i in ids], **kw)
    ends = ends_from_pieces(pieces, text)
    if ends is None:
        ends = ends_from_prefixes([tokenizer.decode(ids[: i + 1], **kw) for i in range(len(ids))], text)
    return ends


def teacher_tokens(tokenizer, text: str) -> tuple[list[int], list[int | None]]:
    """The teacher's tokens of `text` and where each ends. A special token the student emitted is
    in the text as its string (`<|end|>`): a teacher with a special token of that name reads it
    as that token (so a teacher with the student's tokenizer sees the student's ids exactly),
    any other teacher as plain text."""
    kw = dict(add_special_tokens=False)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True, **kw)
        return list(enc["input_ids"]), ends_from_offsets(enc["offset_mapping"])
    ids = list(tokenizer(text, **kw)["input_ids"])
    return ids, decoded_ends(tokenizer, ids, text)


class CrossTokenizerTeacher(Teacher):
    """Wraps a teacher that scores token ids of its own tokenizer (`inner`)."""

    cross_tokenizer = True  # the router and the objective add span signals for it

    def __init__(self, name: str, inner: Teacher, student_tok, teacher_tok, student_eos: list[int]):
        if teacher_tok.eos_token_id is None:
            raise ValueError(f"teacher {name!r}: its tokenizer has no eos_token, so the end of the "
                             "student's answer cannot be scored")
        self.name, self.inner = name, inner
        self.student_tok, self.teacher_tok = student_tok, teacher_tok
        self.student_eos = set(student_eos)

    @property
    def resident(self) -> bool:  # a pooled inner teacher may be offloaded; the router asks
        return self.inner.resident

    def plan(self, batch: TokenBatch, row: int) -> RowPlan:
        cols = batch.gen_mask[row].nonzero().flatten().tolist()
        domain = batch.domains[int(batch.domain_ids[row])]
        if cols and cols[-1] - cols[0] + 1 != len(cols):
            raise TeacherError(f"teacher {self.name!r} has another tokenizer than the student's and scores "
                               f"single-turn completions; a rollout of domain {domain!r} has several model "
                               "turns (agentic episodes need a teacher with the student's tokenizer)")
        example = batch.examples[row] if batch.examples is not None else None
        if example is None:
            raise TeacherError(f"teacher {self.name!r}: a row of domain {domain!r} has no prompt example, "
                               "which a teacher with another tokenizer needs to render the prompt")
        ids = batch.input_ids[row, cols].tolist()
        ends_with_eos = bool(ids) and ids[-1] in self.student_eos
        body = ids[:-1] if ends_with_eos else ids
        s_spans, t_ids, t_spans = self._align(body)
        if ends_with_eos:  # its own span: the student's stop against the teacher's
            n = (max(s_spans) + 1) if s_spans else 0
            s_spans, t_ids, t_spans = s_spans + [n], t_ids + [self.teacher_tok.eos_token_id], t_spans + [n]
        return RowPlan(cols, s_spans, render_prompt(example, self.teacher_tok), t_ids, t_spans)

    def _align(self, body: list[int]) -> tuple[list[int], list[int], list[int]]:
        if not body:
            return [], [], []
        text = self.student_tok.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        t_ids, t_ends = teacher_tokens(self.teacher_tok, text)
        if not text or not t_ids:  # tokens that decode to nothing: nothing for the teacher to score
            raise TeacherError(f"teacher {self.name!r}: the student's completion {body[:8]}... decodes to "
                               f"{text!r}, which its tokenizer turns into {len(t_ids)} tokens")
        s_spans, t_spans = align_spans(decoded_ends(self.student_tok, body, text), t_ends, len(text))
        return s_spans, t_ids, t_spans

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        if topk:
            raise TeacherError(f"teacher {self.name!r} has another tokenizer than the student's: the top-k loss "
                               "needs one vocabulary; use algorithm.loss: sampled")
        B, T = batch.input_ids.shape
        plans = [self.plan(batch, b) for b in range(B)]
        pad = self.teacher_tok.pad_token_id if self.teacher_tok.pad_token_id is not None else 0
        rows = [Rollout.from_completion(batch.domains[0], p.teacher_prompt, p.teacher_completion,
                                        [0.0] * len(p.teacher_completion)) for p in plans]
        scores = self.inner.score(collate(rows, pad), topk=0).logprobs
        lp = torch.zeros((B, T))
        start = torch.arange(T).expand(B, T).clone()
        end = start.clone()
        for b, p in enumerate(plans):
            if not p.columns:
                continue
            n = max(p.student_spans) + 1
            got = scores[b, len(p.teacher_prompt): len(p.teacher_prompt) + len(p.teacher_completion)].double()
            span_lp = torch.zeros(n, dtype=torch.float64).index_add_(0, torch.tensor(p.teacher_spans), got)
            first, last = [T] * n, [-1] * n
            for c, k in zip(p.columns, p.student_spans):
                first[k], last[k] = min(first[k], c), max(last[k], c)
            for c, k in zip(p.columns, p.student_spans):
                lp[b, c], start[b, c], end[b, c] = float(span_lp[k]), first[k], last[k]
        return TeacherScores(lp, span_start=start, span_end=end)


def single_token_share(plans: list[RowPlan]) -> tuple[int, int]:
    """(student tokens whose span is one token on both sides, all student tokens): how often the
    two tokenizations agree token for token, reported by `mopd check`."""
    single = total = 0
    for p in plans:
        s_count: dict[int, int] = {}
        t_count: dict[int, int] = {}
        for k in p.student_spans:
            s_count[k] = s_count.get(k, 0) + 1
        for k in p.teacher_spans:
            t_count[k] = t_count.get(k, 0) + 1
        total += len(p.student_spans)
        single += sum(1 for k in p.student_spans if s_count[k] == 1 and t_count.get(k) == 1)
    return single, total


def build_cross_tokenizer_teacher(cfg, student, student_tok, student_eos: list[int],
                                  temperature: float = 1.0) -> CrossTokenizerTeacher:
    """A teacher of kind hf, vllm or remote with `cross_tokenizer: true`, wrapped. Its own
    tokenizer (the model's; a remote server's `tokenizer`) and chat template render what it scores."""
    from mopd.config.models import ModelSpec
    from mopd.models.loading import load_model, load_tokenizer
    from mopd.teachers.hf_teacher import HFTeacher
    from mopd.teachers.remote import RemoteTeacher

    tok = load_tokenizer(ModelSpec(path=cfg.tokenizer) if cfg.kind == "remote" else cfg.model)
    if cfg.chat_template is not None:
        tok.chat_template = cfg.chat_template
    if cfg.kind == "hf":
        inner = HFTeacher(cfg.name, load_model(cfg.model, tok).to(student.device), temperature=temperature)
    elif cfg.kind == "vllm":
        from mopd.config.models import VLLMOptions
        from mopd.teachers.vllm_teacher import VLLMTeacher  # vLLM is an optional extra

        opts = cfg.vllm or VLLMOptions()
        inner = VLLMTeacher(cfg.name, cfg.model.path, opts, opts.dtype or cfg.model.dtype, temperature=temperature)
    else:
        inner = RemoteTeacher.from_config(cfg, temperature=temperature)
        inner.probe(list(tok("The teacher is ready.", add_special_tokens=False)["input_ids"])[:8] or None)
    return CrossTokenizerTeacher(cfg.name, inner, student_tok, tok, student_eos)
