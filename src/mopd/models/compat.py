"""Can a teacher score the student's token ids? Checked once, before training starts.

MOPD feeds the teacher exactly the student's token ids, so the two must share a vocabulary:
the same token -> id map and the same special tokens. A mismatch would make every teacher
log-prob silently wrong, so it is an error, not a warning.
"""

from __future__ import annotations

from dataclasses import dataclass


class TokenizerMismatch(ValueError):
    pass


@dataclass
class CompatReport:
    teacher: str
    same_vocab: bool
    same_specials: bool
    same_chat_template: bool
    detail: str
    cross_tokenizer: bool = False  # declared: it scores text with its own tokenizer, so it may differ

    @property
    def ok(self) -> bool:
        return self.cross_tokenizer or (self.same_vocab and self.same_specials)


def compare_tokenizers(name: str, student_tok, teacher_tok) -> CompatReport:
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    same_vocab = s_vocab == t_vocab
    detail = []
    if not same_vocab:
        diff = [tok for tok in s_vocab if t_vocab.get(tok) != s_vocab[tok]]
        detail.append(
            f"vocabularies differ ({len(s_vocab)} vs {len(t_vocab)} tokens, {len(diff)} ids disagree, "
            f"e.g. {diff[:3]})"
        )
    specials = ("eos_token_id", "bos_token_id", "pad_token_id")
    bad = [s for s in specials[:2] if getattr(student_tok, s) != getattr(teacher_tok, s)]
    if bad:
        detail.append("special tokens differ: " + ", ".join(
            f"{s} {getattr(student_tok, s)} vs {getattr(teacher_tok, s)}" for s in bad))
    same_template = getattr(student_tok, "chat_template", None) == getattr(teacher_tok, "chat_template", None)
    if not same_template:
        detail.append("chat templates differ (prompts render differently for the teacher)")
    return CompatReport(name, same_vocab, not bad, same_template, "; ".join(detail) or "identical")


def check_teacher_vocab(name: str, student_tok, teacher_tok, model_vocab_size: int | None = None,
                        student_vocab_size: int | None = None) -> CompatReport:
    report = compare_tokenizers(name, student_tok, teacher_tok)
    if not report.ok:
        raise TokenizerMismatch(
            f"teacher {name!r} cannot score the student's token ids: {report.detail}. "
            "MOPD needs a teacher with the student's tokenizer (e.g. an RL fine-tune of the same base), "
            "or one declared with teachers[].cross_tokenizer: true, which scores the student's text with "
            "its own tokenizer (docs/cross_tokenizer.md)."
        )
    if model_vocab_size is not None and student_vocab_size is not None and model_vocab_size < student_vocab_size:
        raise TokenizerMismatch(
            f"teacher {name!r} has an output layer of {model_vocab_size} tokens, fewer than the "
            f"student's {student_vocab_size}"
        )
    return report
