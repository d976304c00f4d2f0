"""Turn a validated config into the objects of a run: student, teachers, domains, loop.

Everything that can fail on bad input (files, tokenizers, prompt lengths) fails here,
before the first rollout.
"""

from __future__ import annotations

from pathlib import Path

from mopd.config.schema import DomainConfig, ModelSpec, RunConfig, TeacherConfig
from mopd.data.mixture import MixtureSampler
from mopd.data.prompts import DataError, load_domain_examples, render_prompt
from mopd.domains.base import Example
from mopd.domains.registry import build_domain
from mopd.models.compat import check_teacher_vocab
from mopd.models.loading import load_model, load_tokenizer
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.router import TeacherRouter
from mopd.training.loop import OnPolicyRun
from mopd.training.optim import build_optimizer
from mopd.training.rollouts import Verifier, eos_ids


def build_model(spec: ModelSpec):
    tokenizer = load_tokenizer(spec)
    return load_model(spec, tokenizer), tokenizer


def build_teacher(cfg: TeacherConfig, student, student_tok) -> HFTeacher:
    if cfg.kind == "self":
        return HFTeacher.frozen_copy_of(cfg.name, student)
    assert cfg.model is not None
    tok = load_tokenizer(cfg.model)
    check_teacher_vocab(cfg.name, student_tok, tok)
    model = load_model(cfg.model, tok)
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    s_vocab = student.get_output_embeddings().weight.shape[0] if student.get_output_embeddings() is not None else None
    check_teacher_vocab(cfg.name, student_tok, tok, vocab, s_vocab)
    return HFTeacher(cfg.name, model)


def domain_data(d: DomainConfig, split: str = "train") -> tuple[list[Example], Verifier | None]:
    """A domain's prompts for `split` ('train' or 'eval') and its verifier, if any."""
    src = d.prompts
    verifier = None
    if src.builtin is not None:
        dom = build_domain(d.name, src.builtin, src.params)
        examples = dom.train_examples() if split == "train" else dom.eval_examples()
        verifier = dom.reward
    else:
        assert src.path is not None
        examples = load_domain_examples(src.path, d.name, src.split if split == "train" else split)
    if d.verifier is not None:
        verifier = build_domain(d.name, d.verifier, {}).reward
    if not examples:
        raise DataError(f"domain {d.name!r} has no {split} prompts")
    return examples, verifier


def check_prompt_lengths(domain: str, examples: list[Example], tokenizer, limit: int) -> None:
    for i, ex in enumerate(examples):
        n = len(render_prompt(ex, tokenizer))
        if n > limit:
            raise DataError(f"domain {domain!r}, prompt {i}: {n} tokens, longer than "
                            f"sampling.max_prompt_tokens={limit}; shorten it or raise the limit")


def build_domains(cfg: RunConfig, tokenizer) -> tuple[dict[str, list[Example]], dict[str, Verifier]]:
    examples, verifiers = {}, {}
    for d in cfg.domains:
        ex, ver = domain_data(d)
        check_prompt_lengths(d.name, ex, tokenizer, cfg.sampling.max_prompt_tokens)
        examples[d.name] = ex
        if ver is not None:
            verifiers[d.name] = ver
    return examples, verifiers


def build_mopd_run(cfg: RunConfig, output_dir: str | None = None) -> OnPolicyRun:
    student, tok = build_model(cfg.student)
    teachers = {t.name: build_teacher(t, student, tok) for t in cfg.teachers}
    router = TeacherRouter(teachers, {d.name: d.teacher for d in cfg.domains})
    examples, verifiers = build_domains(cfg, tok)
    sampler = MixtureSampler(examples, {d.name: d.weight for d in cfg.domains}, seed=cfg.seed)
    optimizer, scheduler = build_optimizer(student, cfg.optim)
    return OnPolicyRun(
        model=student, tokenizer=tok, engine=HFRolloutEngine(student, tok.pad_token_id, eos_ids(tok, student)),
        sampler=sampler, objective=MOPDObjective(router, cfg.algorithm), optimizer=optimizer,
        scheduler=scheduler, sampling=cfg.sampling, optim=cfg.optim,
        output_dir=Path(output_dir or cfg.output_dir), checkpoint=cfg.checkpoint, logging=cfg.logging,
        verifiers=verifiers, seed=cfg.seed, name="mopd", run_config=cfg.model_dump(),
    )
