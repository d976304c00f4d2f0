"""The run configuration: one YAML file, validated before anything heavy starts.

Every section is a strict pydantic model (unknown keys are errors), so a typo in a
config fails at `mopd check` time with the key's path, not an hour into a run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mopd.config.ahead import ahead_problem
from mopd.config.precision import Precision, apply_precision

# Re-exported: the model sections live in mopd.config.models; the run config is built here.
from mopd.config.models import (DType, ModelSpec, RolloutConfig, Strict, TeacherConfig,  # noqa: F401
                                TinyModel, VLLMOptions)


class PromptSource(Strict):
    """Where a domain's prompts come from."""

    # A JSONL / parquet file, or a `datasets` dataset name or directory.
    path: str | None = None
    split: str = "train"
    # A built-in or user-defined domain generator (see mopd.domains.registry).
    builtin: str | None = None
    params: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "PromptSource":
        if (self.path is None) == (self.builtin is None):
            raise ValueError("a prompt source needs exactly one of 'path' or 'builtin'")
        return self


class TeacherShare(Strict):
    """One teacher of a domain's mixture and its weight (weights are normalised to sum 1)."""

    name: str
    weight: float = Field(gt=0)


class DomainConfig(Strict):
    name: str
    prompts: PromptSource
    weight: float = 1.0
    # One teacher's name, or a weighted mixture: [{name: math_rl, weight: 0.7}, {name: generalist, weight: 0.3}].
    # The advantage is the weighted sum of each teacher's clipped advantage (docs/method.md).
    teacher: str | list[TeacherShare] | None = None

    @property
    def teacher_names(self) -> list[str]:
        if self.teacher is None:
            return []
        return [self.teacher] if isinstance(self.teacher, str) else [t.name for t in self.teacher]

    @property
    def route(self) -> str | list[tuple[str, float]]:
        """What the router takes: a name, or (name, weight) pairs."""
        return self.teacher if isinstance(self.teacher, str) else [(t.name, t.weight) for t in self.teacher]
    # Optional: a built-in domain name whose verifier rewards this domain's completions.
    verifier: str | None = None

    @field_validator("weight")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"mixture weight must be >= 0, got {v}")
        return v


class ISCorrection(Strict):
    """IcePop-style mask: tokens whose train/inference ratio leaves [eps_low, eps_high] get weight 0."""

    eps_low: float = Field(0.5, gt=0)
    eps_high: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "ISCorrection":
        if self.eps_low > 1.0 or self.eps_high < 1.0:
            raise ValueError("need eps_low <= 1 <= eps_high")
        return self


class AlgorithmConfig(Strict):
    a_max: float = Field(5.0, gt=0)
    alpha: float = Field(0.0, ge=0)
    is_correction: ISCorrection | None = Field(default_factory=ISCorrection)
    loss: Literal["sampled", "topk"] = "sampled"
    topk: int = Field(64, gt=0)
    normalization: Literal["sequence", "token"] = "sequence"


class MixtureConfig(Strict):
    """How the domain mixture moves during a run (mopd.data.adaptive; docs/method.md)."""

    # fixed: domains[].weight throughout. tokens: each domain's share of trained tokens follows
    # its weight (prompt shares divided by measured completion length). gap: shares follow the
    # weight times the domain's measured reverse KL to its teacher (MOPD).
    mode: Literal["fixed", "tokens", "gap"] = "fixed"
    every: int = Field(10, gt=0)  # steps between updates of the shares
    min_share: float = Field(0.05, ge=0, lt=1)  # no domain's share goes below this


class SamplingConfig(Strict):
    prompts_per_step: int = Field(16, gt=0)
    rollouts_per_prompt: int = Field(1, gt=0)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(32, gt=0)
    max_prompt_tokens: int = Field(256, gt=0)
    # Generate each step's prompts in this many chunks; teachers score a finished chunk while
    # the next one generates (mopd.training.overlap). 1: generate everything, then score.
    overlap_chunks: int = Field(1, gt=0)
    # 1: sample and score the next step's batch while this step's update runs (mopd.training.ahead).
    # Each batch is then one update behind the student; the IS correction weighs that in. Needs a
    # rollout engine with its own weights (vllm). 0: strictly on-policy.
    ahead: int = Field(0, ge=0, le=1)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)


class VerifierConfig(Strict):
    """How domain verifiers are called on the student's completions (mopd.verifiers.safe_reward)."""

    # A verifier that hangs on one sample gives it reward 0 after this long; the run goes on.
    timeout_s: float = Field(30.0, gt=0)
    # "thread": a hung verifier is abandoned (cheap; cannot stop one stuck in C code).
    # "process": each call runs in a forked child that is killed at the timeout.
    isolation: Literal["thread", "process"] = "thread"


class OptimConfig(Strict):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = 1.0
    grad_accum_steps: int = Field(1, gt=0)
    # Padded tokens per micro-batch of the update, at most: rows of similar length go together and
    # a batch splits into more micro-batches than grad_accum_steps where needed. None: 1024 on a
    # CPU (whole 64 x 300-token batches ran 4x slower there), unlimited on a GPU.
    micro_batch_tokens: int | None = Field(None, gt=0)
    steps: int = Field(100, gt=0)
    # float32 copies of a 16-bit student's weights for AdamW to step (mopd.distributed.master_weights).
    # None: on for a bf16 / fp16 student unless DeepSpeed or FSDP2 keeps its own; false: off.
    master_weights: bool | None = None
    # Updates with a non-finite loss or gradient are skipped; this many in a row stop the run.
    max_nonfinite_in_a_row: int = Field(3, gt=0)
    # A step with no token to learn from (every GRPO group dropped, every token outside the IS
    # bounds) skips its optimiser step; this many in a row stop the run (None: go on regardless).
    max_empty_in_a_row: int | None = Field(10, gt=0)


class CheckpointConfig(Strict):
    every: int = Field(0, ge=0)  # 0: only at the end
    keep: int = Field(2, gt=0)


class LoggingConfig(Strict):
    every: int = Field(1, gt=0)
    jsonl: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "mopd"
    progress: bool = True


class DistributedConfig(Strict):
    """Where and how the student trains. The number of processes is the launcher's business
    (`accelerate launch`, `torchrun`; see docs/distributed.md): this section says what each
    process runs on, and is passed to `accelerate.Accelerator`."""

    # auto: the GPU when torch sees one, else the CPU; cpu: the CPU even when a GPU is there;
    # cuda: a GPU, an error if there is none. Each process takes the GPU of its local rank.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Autocast for the student's forward and backward; the weights and optimizer state keep
    # `student.dtype`. bf16 runs on CPUs and GPUs; fp16 only on GPUs (with a loss scaler).
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    @model_validator(mode="after")
    def _fp16_needs_gpu(self) -> "DistributedConfig":
        if self.device == "cpu" and self.mixed_precision == "fp16":
            raise ValueError("mixed_precision 'fp16' needs a GPU (accelerate ignores it on a CPU); "
                             "use 'bf16' or 'no' with device 'cpu'")
        return self


class TeacherPoolConfig(Strict):
    """Local transformers teachers (kind hf / self) kept loaded at once (mopd.teachers.pool)."""

    # None: all of them. Else the others wait offloaded: in CPU memory when teachers run on a
    # GPU, on disk (a safetensors snapshot in the temporary directory) when they run on the CPU.
    max_resident: int | None = Field(None, gt=0)


class RunConfig(Strict):
    """An on-policy run: `mopd distill`, and every RL stage of `mopd reproduce`."""

    output_dir: str = "runs/mopd"
    seed: int = 0
    # mopd: each domain's teachers score every token (reverse KL). grpo: each domain's verifier
    # rewards whole rollouts, group-normalised (the domain teachers and the RL baselines).
    objective: Literal["mopd", "grpo"] = "mopd"
    # One coherent choice of every dtype (mopd.config.precision): float32, bf16-mixed, bf16,
    # fp16-mixed or auto (by what this machine computes natively); null: the keys as written.
    precision: Precision | None = None
    student: ModelSpec
    teachers: list[TeacherConfig] = Field(default_factory=list)
    domains: list[DomainConfig] = Field(min_length=1)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    teacher_pool: TeacherPoolConfig = Field(default_factory=TeacherPoolConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="before")
    @classmethod
    def _precision(cls, data):
        return apply_precision(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _routing(self) -> "RunConfig":
        names = [t.name for t in self.teachers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"teacher names must be unique, repeated: {sorted(dupes)}")
        domain_names = [d.name for d in self.domains]
        dupes = {n for n in domain_names if domain_names.count(n) > 1}
        if dupes:
            raise ValueError(f"domain names must be unique, repeated: {sorted(dupes)}")
        check_routes(self)
        if sum(d.weight for d in self.domains) <= 0:
            raise ValueError("domain mixture weights sum to zero: give at least one domain a weight > 0")
        if self.sampling.ahead and (problem := ahead_problem(
                engine_shares_weights=self.rollout.engine == "hf", is_correction=self.algorithm.is_correction is not None,
                mixture_mode=self.sampling.mixture.mode, self_teacher_on_lora=self_teacher_on_lora(self))):
            raise ValueError(problem)
        check_outcome_term(self.algorithm, self.sampling.rollouts_per_prompt, "sampling.rollouts_per_prompt")
        check_self_teacher_on_lora(self)
        return self


def check_routes(cfg: RunConfig) -> None:
    """MOPD: every domain routes to known teachers, and every teacher serves a domain. GRPO: no teachers."""
    names = [t.name for t in cfg.teachers]
    if cfg.objective == "grpo":
        if names:
            raise ValueError(f"objective 'grpo' learns from the verifiers' rewards, not teachers: remove teachers {names}")
        return
    for d in cfg.domains:
        if not d.teacher_names:
            raise ValueError(f"domain {d.name!r} has no teacher: set domains[].teacher to one of {names}")
        for t in d.teacher_names:
            if t not in names:
                raise ValueError(
                    f"domain {d.name!r} routes to unknown teacher {t!r}; teachers are {names} (domains[].teacher)")
        if len(set(d.teacher_names)) < len(d.teacher_names):
            raise ValueError(f"domain {d.name!r} names a teacher twice in its mixture (domains[].teacher)")
    used = {t for d in cfg.domains for t in d.teacher_names}
    unused = [n for n in names if n not in used]
    if unused:
        raise ValueError(f"teachers {unused} are used by no domain: remove them or route a domain to them")


def self_teacher_on_lora(cfg: RunConfig) -> bool:
    """A 'self' teacher of a LoRA student is the student with its adapter switched off: it must
    not score while the same model samples or trains, which overlap and ahead would make it do."""
    return cfg.student.lora is not None and any(t.kind == "self" for t in cfg.teachers)


def check_self_teacher_on_lora(cfg: RunConfig) -> None:
    if self_teacher_on_lora(cfg) and cfg.sampling.overlap_chunks > 1 and cfg.rollout.engine == "hf":
        raise ValueError("a 'self' teacher of a LoRA student scores with the student's own weights (adapter "
                         "off), so it cannot run beside sampling from them: set sampling.overlap_chunks: 1 with "
                         "rollout.engine 'hf'")


def check_outcome_term(algo: AlgorithmConfig, rollouts_per_prompt: int, key: str) -> None:
    """The outcome term is group-normalised: with one rollout per prompt it is exactly 0."""
    if algo.alpha > 0 and rollouts_per_prompt < 2:
        raise ValueError(f"algorithm.alpha > 0 adds a group-normalised outcome advantage, which is exactly 0 "
                         f"with one rollout per prompt: set {key} >= 2 (a GRPO group) or algorithm.alpha: 0")
