"""`mopd check`: is the setup sound before an expensive run?

Distilling the student into itself must give a reverse KL of ~0 and a policy gradient of
~0; anything else means the teacher and the trainer do not see the same tokens or numbers
(padding, position ids, dtype, temperature...). It also reports, per teacher, whether the
vocabulary, special tokens and chat template agree with the student's; for a teacher with
another tokenizer, how often the two tokenizations agree token for token, and the same
self-distillation forced through text and span alignment (docs/cross_tokenizer.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from mopd.build import build_domains, build_model
from mopd.config.schema import AlgorithmConfig, ModelSpec, RunConfig
from mopd.data.mixture import MixtureSampler
from mopd.models.compat import CompatReport, compare_tokenizers
from mopd.models.loading import load_tokenizer
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.types import collate
from mopd.teachers.cross_tokenizer import CrossTokenizerTeacher, single_token_share
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.remote import RemoteTeacher
from mopd.teachers.router import TeacherRouter
from mopd.training.overlap import step_generator
from mopd.rollout.sample import collect_rollouts, eos_ids
from mopd.training.update import update_step

KL_TOLERANCE = 1e-4
GRAD_TOLERANCE = 1e-4


@dataclass
class SanityReport:
    reverse_kl: float
    grad_norm: float
    tokens: int
    teachers: list[CompatReport]
    temperature: float = 1.0
    # The same check through text and span alignment (run when a teacher has another tokenizer).
    span_reverse_kl: float | None = None
    # Per teacher with another tokenizer: (student tokens whose span is one token on both sides, all).
    single_token_spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (abs(self.reverse_kl) < KL_TOLERANCE and self.grad_norm < GRAD_TOLERANCE
                and (self.span_reverse_kl is None or abs(self.span_reverse_kl) < KL_TOLERANCE)
                and all(t.ok for t in self.teachers))


class _NoStep:
    """Optimiser stand-in: the check measures the gradient but must not change the weights."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...

    def get_last_lr(self) -> list[float]:
        return [0.0]


def teacher_tokenizer(t, student_tok):
    """The tokenizer a teacher reads its input with (None: a remote one that names none)."""
    if t.kind == "self":
        return student_tok
    if t.kind == "remote":
        return None if t.tokenizer is None else load_tokenizer(ModelSpec(path=t.tokenizer))
    tok = load_tokenizer(t.model)
    if t.cross_tokenizer and t.chat_template is not None:
        tok.chat_template = t.chat_template
    return tok


def teacher_agreement(cfg: RunConfig, student_tok) -> list[CompatReport]:
    """Per teacher, how its tokenizer compares with the student's. Remote teachers are also
    probed (TeacherError if the server does not answer with prompt log-probs); one without a
    configured `tokenizer` is reported as not compared."""
    reports = []
    for t in cfg.teachers:
        if t.kind == "remote":
            teacher = RemoteTeacher.from_config(t, temperature=cfg.sampling.temperature)
            try:
                teacher.probe()
            finally:
                teacher.close()
            if t.tokenizer is None:
                reports.append(CompatReport(t.name, True, True, True, "remote, answers; tokenizer not "
                                            "compared (set teachers[].tokenizer to compare it)"))
                continue
        report = compare_tokenizers(t.name, student_tok, teacher_tokenizer(t, student_tok))
        report.cross_tokenizer = getattr(t, "cross_tokenizer", False)
        reports.append(report)
    return reports


def self_distillation_check(cfg: RunConfig) -> SanityReport:
    student, tok = build_model(cfg.student)
    examples, verifiers = build_domains(cfg, tok)
    # At the configured sampling temperature: the teacher must score at the temperature the
    # student is trained at, and a gap there is exactly what this check is for.
    temperature = cfg.sampling.temperature
    sampler = MixtureSampler(examples, {d.name: d.weight for d in cfg.domains}, seed=cfg.seed)
    engine = HFRolloutEngine(student, tok.pad_token_id, eos_ids(tok, student))
    sampling = cfg.sampling.model_copy(update={"rollouts_per_prompt": 1})
    rollouts = collect_rollouts(engine, tok, sampler.next_batch(sampling.prompts_per_step), sampling,
                                verifiers, step_generator(cfg.seed, 0), cfg.verifier)
    batch = collate(rollouts, tok.pad_token_id, sorted(sampler.shares))
    # A copy of the student as it is, even a LoRA one (whose 'self' teacher in a run is its base).
    teacher = HFTeacher("self", copy.deepcopy(student), temperature=temperature)
    kl, grad_norm = _self_distill(cfg, student, teacher, rollouts, batch)
    reports = teacher_agreement(cfg, tok)
    span_kl, shares = None, {}
    if any(r.cross_tokenizer for r in reports):
        # The same, forced through text, re-tokenization and span alignment: the path a teacher
        # with another tokenizer takes, with the student's own tokenizer on both sides.
        through_text = CrossTokenizerTeacher("self", teacher, tok, tok, eos_ids(tok, student))
        span_kl, span_grad = _self_distill(cfg, student, through_text, rollouts, batch)
        grad_norm = max(grad_norm, span_grad)
        for t, r in zip(cfg.teachers, reports):
            if r.cross_tokenizer:  # alignment needs the tokenizers only, not the teacher's model
                aligner = CrossTokenizerTeacher(t.name, None, tok, teacher_tokenizer(t, tok), eos_ids(tok, student))
                plans = [aligner.plan(batch, b) for b in range(batch.size)]
                shares[t.name] = single_token_share(plans)
                r.detail = f"another tokenizer, declared (cross_tokenizer); {r.detail}"
    return SanityReport(kl, grad_norm, int(batch.gen_mask.sum()), reports, temperature, span_kl, shares)


def _self_distill(cfg: RunConfig, student, teacher, rollouts, batch) -> tuple[float, float]:
    """Reverse KL (mean |per-token|) and gradient norm of one no-op MOPD step toward `teacher`."""
    router = TeacherRouter({"self": teacher}, {d.name: "self" for d in cfg.domains})
    # The plain sampled-token loss, with no IS mask, so any gap is visible.
    objective = MOPDObjective(router, AlgorithmConfig(a_max=cfg.algorithm.a_max, is_correction=None))
    signals = objective.score(rollouts, batch)
    nostep = _NoStep()
    scalars, token_metrics = update_step(student, nostep, nostep, batch, signals, objective,
                                         cfg.optim.grad_accum_steps, None, cfg.sampling.temperature)
    mask = batch.gen_mask
    kl = float(token_metrics["reverse_kl"].abs().sum() / mask.sum().clamp(min=1)) if mask.any() else 0.0
    return kl, scalars["grad_norm"]
