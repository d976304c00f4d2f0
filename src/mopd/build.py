"""Turn a validated config into the objects of a run: student, teachers, domains, loop.

Everything that can fail on bad input (files, tokenizers, prompt lengths) fails here,
before the first rollout.
"""

from __future__ import annotations

from pathlib import Path

from mopd.config.schema import DomainConfig, ModelSpec, RolloutConfig, RunConfig, TeacherConfig, VLLMOptions
from mopd.data.adaptive import mixture_adapter
from mopd.data.mixture import MixtureSampler
from mopd.data.prompts import DataError, load_domain_examples, read_rows, render_prompt
from mopd.domains.base import Example
from mopd.domains.registry import build_domain
from mopd.models.compat import check_teacher_vocab
from mopd.models.loading import load_model, load_tokenizer
from mopd.models.precision import warn_if_bf16_emulated
from mopd.objectives.grpo import GRPOObjective
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.teachers.base import Teacher
from mopd.teachers.cross_tokenizer import build_cross_tokenizer_teacher
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.pool import TeacherPool
from mopd.teachers.remote import RemoteTeacher
from mopd.teachers.router import TeacherRouter
from mopd.distributed.backend_checks import check_engines, check_precision
from mopd.distributed.runtime import Accelerated
from mopd.training.run import OnPolicyRun
from mopd.training.optim import build_optimizer
from mopd.rollout.sample import eos_ids
from mopd.verifiers.safe_reward import Verifier


def build_model(spec: ModelSpec, seed: int = 0):
    """The student and its tokenizer; with `spec.lora`, a peft model whose adapter alone trains
    (a new adapter initialised from `seed`)."""
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer)
    if spec.lora is not None:
        from mopd.models.lora import apply_lora  # peft is an optional extra

        model = apply_lora(model, spec.lora, seed)
    return model, tokenizer


def build_teacher(cfg: TeacherConfig, student, student_tok, temperature: float = 1.0) -> Teacher:
    """A teacher that scores at `temperature`, the rollouts' sampling temperature: the student's
    log-probs in the update are taken at it too, so both sides are compared alike."""
    if cfg.kind == "self":
        return HFTeacher.frozen_copy_of(cfg.name, student, temperature=temperature)
    if cfg.cross_tokenizer:  # scores text with its own tokenizer: no shared vocabulary to check
        return build_cross_tokenizer_teacher(cfg, student, student_tok, eos_ids(student_tok, student), temperature)
    if cfg.kind == "remote":
        return build_remote_teacher(cfg, student_tok, temperature)
    if cfg.kind == "vllm":
        return build_vllm_teacher(cfg, student, student_tok, temperature)
    assert cfg.model is not None
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, tok)
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    s_vocab = student.get_output_embeddings().weight.shape[0] if student.get_output_embeddings() is not None else None
    check_teacher_vocab(cfg.name, student_tok, tok, vocab, s_vocab)
    return HFTeacher(cfg.name, model.to(student.device), temperature=temperature)  # where the student runs


def build_teachers(cfg: RunConfig, student, student_tok) -> dict[str, Teacher]:
    """Every teacher; at most `teacher_pool.max_resident` local (hf / self) ones loaded at once."""
    pool = TeacherPool(cfg.teacher_pool.max_resident)
    teachers = {}
    for t in cfg.teachers:
        if t.kind == "hf" or (t.kind == "self" and cfg.student.lora is None):  # a LoRA 'self' holds no weights
            pool.make_room()  # offload before loading the next one: memory never holds one more
        teachers[t.name] = pool.add(build_teacher(t, student, student_tok, cfg.sampling.temperature))
    return teachers


def build_remote_teacher(cfg: TeacherConfig, student_tok, temperature: float = 1.0) -> RemoteTeacher:
    """A remote teacher, checked before training: its tokenizer (when given) must be the student's,
    and the server must answer with prompt log-probs, so a dead server fails now, not at step 1."""
    if cfg.tokenizer is not None:
        check_teacher_vocab(cfg.name, student_tok, load_tokenizer(ModelSpec(path=cfg.tokenizer)))
    teacher = RemoteTeacher.from_config(cfg, temperature=temperature)
    ids = list(student_tok("The teacher is ready.")["input_ids"])[:8]
    teacher.probe(ids if len(ids) >= 2 else None)
    return teacher


def build_vllm_teacher(cfg: TeacherConfig, student, student_tok, temperature: float = 1.0):
    """An in-process vLLM teacher, with the tokenizer and vocabulary checks of an 'hf' teacher."""
    from transformers import AutoConfig

    from mopd.teachers.vllm_teacher import VLLMTeacher  # vLLM is an optional extra

    tok = load_tokenizer(cfg.model)
    vocab = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code).vocab_size
    s_vocab = student.get_output_embeddings().weight.shape[0] if student.get_output_embeddings() is not None else None
    check_teacher_vocab(cfg.name, student_tok, tok, vocab, s_vocab)
    opts = cfg.vllm or VLLMOptions()
    return VLLMTeacher(cfg.name, cfg.model.path, opts, opts.dtype or cfg.model.dtype, temperature=temperature)


def build_engine(rollout: RolloutConfig, student, tok, seed: int = 0):
    """The rollout engine: transformers on the trained model itself, or vLLM (weights pushed each step)."""
    if rollout.engine == "vllm":
        from mopd.rollout.vllm_engine import VLLMRolloutEngine  # vLLM is an optional extra

        return VLLMRolloutEngine(student, eos_ids(tok, student), rollout.vllm, seed=seed)
    return HFRolloutEngine(student, tok.pad_token_id, eos_ids(tok, student))


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


def check_prompt_lengths(domain: str, examples: list[Example], tokenizer, limit: int,
                         max_new_tokens: int = 0, context: int | None = None) -> None:
    """Every prompt fits `sampling.max_prompt_tokens`, and prompt + completion fit the model's context."""
    for i, ex in enumerate(examples):
        n = len(render_prompt(ex, tokenizer))
        if n > limit:
            raise DataError(f"domain {domain!r}, prompt {i}: {n} tokens, longer than "
                            f"sampling.max_prompt_tokens={limit}; shorten it or raise the limit")
        if context is not None and n + max_new_tokens > context:
            raise DataError(f"domain {domain!r}, prompt {i}: {n} prompt tokens + sampling.max_new_tokens="
                            f"{max_new_tokens} exceed the student's context of {context} tokens; "
                            "shorten the prompt or lower sampling.max_new_tokens")


def build_domains(cfg: RunConfig, tokenizer, context: int | None = None
                  ) -> tuple[dict[str, list[Example]], dict[str, Verifier]]:
    check_shared_files(cfg)
    examples, verifiers = {}, {}
    for d in cfg.domains:
        ex, ver = domain_data(d)
        check_prompt_lengths(d.name, ex, tokenizer, cfg.sampling.max_prompt_tokens,
                             cfg.sampling.max_new_tokens, context)
        examples[d.name] = ex
        if ver is not None:
            verifiers[d.name] = ver
    return examples, verifiers


def check_shared_files(cfg: RunConfig) -> None:
    """A file read by several domains must label every row: an unlabelled row would be
    adopted by each of them and trained on twice, under different teachers."""
    by_source: dict[tuple[str, str], list[str]] = {}
    for d in cfg.domains:
        if d.prompts.path is not None:
            by_source.setdefault((d.prompts.path, d.prompts.split), []).append(d.name)
    for (path, split), names in by_source.items():
        if len(names) < 2:
            continue
        for i, row in enumerate(read_rows(path, split)):
            if not isinstance(row, dict) or row.get("domain") is None:
                raise DataError(f"{path}, row {i}: no 'domain', but the file is shared by domains {names}; "
                                "add a 'domain' field naming one of them")


def context_length(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def check_lora_backend(cfg: RunConfig, dist) -> None:
    """LoRA is tested alone and under DDP; FSDP2 and DeepSpeed wrap the model in ways the adapter's
    checkpoints, merged pushes and 'self' teacher have not been tested with."""
    if cfg.student.lora is not None and (dist.fsdp2 or dist.deepspeed):
        raise ValueError("student.lora is supported in one process and under DDP, not yet under FSDP2 or "
                         "DeepSpeed (untested: adapter checkpoints and merged weight pushes go through their "
                         "wrappers); launch with DDP, or train the full model")
    if cfg.student.lora is not None and cfg.rollout.engine == "vllm":
        from mopd.models.lora import uses_dora

        if uses_dora(cfg.student.lora):
            # The vLLM engine samples from merged weights, and DoRA's merge (a per-column norm of
            # W + BA) is not one mopd computes: refused here rather than at the first push.
            raise ValueError("student.lora with use_dora: the vLLM rollout engine samples from the merged "
                             "weights, and merging DoRA is not supported; use rollout.engine 'hf' or plain "
                             "LoRA (use_dora: false)")


def build_objective(cfg: RunConfig, student, tok):
    """MOPD: the domains' teachers score each token; GRPO: each domain's verifier rewards each rollout."""
    if cfg.objective == "grpo":
        return GRPOObjective(cfg.algorithm.is_correction)
    teachers = build_teachers(cfg, student, tok)
    return MOPDObjective(TeacherRouter(teachers, {d.name: d.route for d in cfg.domains}), cfg.algorithm)


def build_run(cfg: RunConfig, output_dir: str | None = None, name: str | None = None) -> OnPolicyRun:
    """The one builder of on-policy runs: `mopd distill`, every RL stage of `mopd reproduce`
    (teachers, MOPD, Mix-RL, Cascade RL), `mopd train-teacher` and the benchmarks."""
    dist = Accelerated.from_config(cfg.distributed)  # this process's device and rank
    check_engines(cfg, dist.world, sharded=dist.fsdp2)
    check_precision(cfg, sharded=dist.fsdp2)
    check_lora_backend(cfg, dist)
    warn_if_bf16_emulated(cfg, dist.device)
    student, tok = build_model(cfg.student, cfg.seed)
    student.to(dist.device)  # before the teachers: local ones (and 'self' copies) follow it
    objective = build_objective(cfg, student, tok)
    examples, verifiers = build_domains(cfg, tok, context_length(student))
    unverified = [d.name for d in cfg.domains if d.name not in verifiers]
    if cfg.objective == "grpo" and unverified:  # else every reward is 0 and GRPO learns nothing
        raise DataError(f"objective 'grpo' learns from each domain's verifier; domains {unverified} have none: "
                         "give each a built-in prompt set or domains[].verifier")
    sampler = MixtureSampler(examples, {d.name: d.weight for d in cfg.domains}, seed=cfg.seed)
    optimizer, scheduler = build_optimizer(student, cfg.optim, dist.keeps_master_weights)
    engine = build_engine(cfg.rollout, student, tok, cfg.seed)
    model, optimizer, scheduler = dist.prepare(student, optimizer, scheduler)
    return OnPolicyRun(
        model=model, tokenizer=tok, engine=dist.rollout_engine(engine, model),
        sampler=dist.shard(sampler, cfg.sampling.prompts_per_step), objective=objective,
        optimizer=optimizer, scheduler=scheduler, sampling=cfg.sampling, optim=cfg.optim,
        output_dir=Path(output_dir or cfg.output_dir), checkpoint=cfg.checkpoint, logging=cfg.logging,
        verifiers=verifiers, verification=cfg.verifier, seed=dist.rank_seed(cfg.seed), name=name or cfg.objective, run_config=cfg.model_dump(),
        dist=dist, mixture=mixture_adapter(cfg.sampling.mixture, {d.name: d.weight for d in cfg.domains}),
    )
