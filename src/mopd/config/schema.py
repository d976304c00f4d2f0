"""The run configuration: one YAML file, validated before anything heavy starts.

Every section is a strict pydantic model (unknown keys are errors), so a typo in a
config fails at `mopd check` time with the key's path, not an hour into a run.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["float32", "bfloat16", "float16"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModel(Strict):
    """Build a randomly initialised tiny Llama with the character tokenizer (tests, demo)."""

    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    seed: int = 0


class ModelSpec(Strict):
    """Where a model comes from: a HF directory or hub id, a GGUF file, or a tiny build."""

    path: str | None = None
    gguf_file: str | None = None
    tiny: TinyModel | None = None
    dtype: DType = "float32"
    trust_remote_code: bool = False
    # transformers' attention kernel ("sdpa", "eager", "flash_attention_2"...); None: its default.
    # On a CPU, "eager" trains short sequences faster than "sdpa" (docs/benchmarks.md).
    attn_implementation: str | None = None
    # Students only: train a LoRA adapter (peft's LoraConfig fields), or {path: ADAPTER_DIR} to
    # continue an existing one (mopd.models.lora, docs/lora.md).
    lora: dict | None = None

    @field_validator("lora")
    @classmethod
    def _lora_keys(cls, v: dict | None) -> dict | None:
        from mopd.models.lora import check_lora  # imports peft, only when LoRA is asked for

        return None if v is None else check_lora(v)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if self.tiny is not None and (self.path or self.gguf_file):
            raise ValueError("give either 'tiny' or 'path'/'gguf_file', not both")
        if self.tiny is None and not self.path and not self.gguf_file:
            raise ValueError("a model needs 'path' (HF directory or hub id), 'gguf_file' or 'tiny'")
        return self


class VLLMOptions(Strict):
    """A vLLM engine in the training process (`rollout.engine: vllm`, teachers of kind 'vllm')."""

    dtype: DType | None = None  # None: the model's own dtype (float32 makes log-probs match the trainer's)
    # On a CPU this is the share of RAM vLLM reserves; in-process it also counts the trainer's memory.
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    kv_cache_gb: float | None = Field(None, gt=0)  # an explicit KV-cache size; overrides the share above
    enforce_eager: bool = False  # True: no torch.compile / CUDA graphs (starts ~4x faster on a CPU)
    max_model_len: int | None = Field(None, gt=0)  # None: the model's context length
    sleep: bool = True  # rollout engine: free its memory while the trainer runs, where vLLM offers it


class RolloutConfig(VLLMOptions):
    # hf: transformers sampling on the trained model itself; vllm: vLLM, weights pushed after each update.
    engine: Literal["hf", "vllm"] = "hf"


class TeacherConfig(Strict):
    name: str
    # hf: an in-process transformers model; self: the student's frozen initial weights;
    # remote: a vLLM OpenAI-compatible server that returns prompt log-probs (mopd.teachers.remote).
    # vllm: an in-process vLLM engine on `model.path` scoring with prompt_logprobs.
    kind: Literal["hf", "self", "remote", "vllm"] = "hf"
    model: ModelSpec | None = None
    vllm: VLLMOptions | None = None  # kind 'vllm' only
    # kind 'remote' only:
    url: str | None = None  # e.g. http://127.0.0.1:8000 (the /v1/completions path is added)
    served_model: str | None = None  # the model name the server knows (vLLM: its --model or --served-model-name)
    tokenizer: str | None = None  # optional HF dir / hub id of the server's tokenizer, compared with the student's
    api_key_env: str | None = None  # NAME of the environment variable holding the API key, never the key
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    concurrency: int = Field(8, gt=0)
    # The temperature the server's prompt log-probs are taken at; must equal sampling.temperature.
    # vLLM ignores a request's temperature for prompt log-probs: 1 for a plain server, T for one
    # started with --hf-overrides '{"logit_scale": 1/T}' (Llama-family models).
    server_temperature: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "TeacherConfig":
        if self.kind in ("hf", "vllm") and self.model is None:
            raise ValueError(f"teacher {self.name!r} of kind {self.kind!r} needs 'model'")
        if self.kind == "vllm" and (self.model.path is None or self.model.gguf_file or self.model.tiny):
            raise ValueError(f"teacher {self.name!r} of kind 'vllm' needs 'model.path': a HF model directory")
        if self.kind != "vllm" and self.vllm is not None:
            raise ValueError(f"teacher {self.name!r}: 'vllm' only applies to kind 'vllm'")
        if self.model is not None and self.model.lora is not None:
            raise ValueError(f"teacher {self.name!r}: 'lora' applies to the student only")
        if self.kind in ("self", "remote") and self.model is not None:
            raise ValueError(f"teacher {self.name!r} of kind {self.kind!r} takes no 'model'")
        remote_only = [k for k in ("url", "served_model", "tokenizer", "api_key_env") if getattr(self, k) is not None]
        if self.server_temperature != 1.0:
            remote_only.append("server_temperature")
        if self.kind != "remote" and remote_only:
            raise ValueError(f"teacher {self.name!r}: {remote_only} only apply to kind 'remote'")
        if self.kind == "remote":
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError(f"teacher {self.name!r} of kind 'remote' needs 'url' starting with http:// "
                                 f"or https://, got {self.url!r}")
            if not self.served_model:
                raise ValueError(f"teacher {self.name!r} of kind 'remote' needs 'served_model': the model "
                                 "name the server was started with")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # A key pasted here would end up in logs and checkpoints; only a variable name is allowed.
            raise ValueError(f"teacher {self.name!r}: api_key_env must be the NAME of an environment "
                             "variable (letters, digits, _), not the key itself")
        return self


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    # A verifier that hangs on one sample gives it reward 0 after this long; the run goes on.
    verifier_timeout_s: float = Field(30.0, gt=0)
    # Generate each step's prompts in this many chunks; teachers score a finished chunk while
    # the next one generates (mopd.training.overlap). 1: generate everything, then score.
    overlap_chunks: int = Field(1, gt=0)
    # "thread": a hung verifier is abandoned (cheap; cannot stop one stuck in C code).
    # "process": each call runs in a forked child that is killed at the timeout.
    verifier_isolation: Literal["thread", "process"] = "thread"
    # 1: sample and score the next step's batch while this step's update runs (mopd.training.ahead).
    # Each batch is then one update behind the student; the IS correction weighs that in. Needs a
    # rollout engine with its own weights (vllm). 0: strictly on-policy.
    ahead: int = Field(0, ge=0, le=1)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)

    @model_validator(mode="after")
    def _mixture_is_on_policy(self) -> "SamplingConfig":
        if self.ahead and self.mixture.mode != "fixed":
            # The next batch is drawn before this step's metrics exist: shares would change a step
            # later than in a resumed run, which must draw what the straight run drew.
            raise ValueError("sampling.mixture.mode other than 'fixed' needs sampling.ahead: 0")
        return self


class OptimConfig(Strict):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = 1.0
    grad_accum_steps: int = Field(1, gt=0)
    steps: int = Field(100, gt=0)
    # float32 copies of a 16-bit student's weights for AdamW to step (mopd.training.master_weights).
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
    """A `mopd distill` run."""

    output_dir: str = "runs/mopd"
    seed: int = 0
    student: ModelSpec
    teachers: list[TeacherConfig]
    domains: list[DomainConfig] = Field(min_length=1)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    teacher_pool: TeacherPoolConfig = Field(default_factory=TeacherPoolConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

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
        for d in self.domains:
            if not d.teacher_names:
                raise ValueError(
                    f"domain {d.name!r} has no teacher: set domains[].teacher to one of {names}"
                )
            for t in d.teacher_names:
                if t not in names:
                    raise ValueError(
                        f"domain {d.name!r} routes to unknown teacher {t!r}; teachers are {names} (domains[].teacher)"
                    )
            if len(set(d.teacher_names)) < len(d.teacher_names):
                raise ValueError(f"domain {d.name!r} names a teacher twice in its mixture (domains[].teacher)")
        used = {t for d in self.domains for t in d.teacher_names}
        unused = [n for n in names if n not in used]
        if unused:
            raise ValueError(f"teachers {unused} are used by no domain: remove them or route a domain to them")
        if sum(d.weight for d in self.domains) <= 0:
            raise ValueError("domain mixture weights sum to zero: give at least one domain a weight > 0")
        if self.sampling.ahead and self.rollout.engine == "hf":
            raise ValueError("sampling.ahead: 1 needs rollout.engine 'vllm' (its own copy of the weights); "
                             "the 'hf' engine samples from the parameters the update is changing")
        if self.sampling.ahead and self.algorithm.is_correction is None:
            raise ValueError("sampling.ahead: 1 trains on batches sampled one update behind the student; "
                             "without algorithm.is_correction nothing corrects for that. Set "
                             "algorithm.is_correction (e.g. {eps_low: 0.5, eps_high: 2.0}) or sampling.ahead: 0")
        check_outcome_term(self.algorithm, self.sampling.rollouts_per_prompt, "sampling.rollouts_per_prompt")
        check_self_teacher_on_lora(self)
        return self


def check_self_teacher_on_lora(cfg: RunConfig) -> None:
    """A 'self' teacher of a LoRA student is the student with its adapter switched off: it must
    not score while the same model samples or trains, which overlap and ahead would make it do."""
    if cfg.student.lora is None or not any(t.kind == "self" for t in cfg.teachers):
        return
    if (cfg.sampling.overlap_chunks > 1 and cfg.rollout.engine == "hf") or cfg.sampling.ahead:
        raise ValueError("a 'self' teacher of a LoRA student scores with the student's own weights (adapter "
                         "off), so it cannot run beside sampling from them or the update: set sampling.ahead: 0, "
                         "and sampling.overlap_chunks: 1 with rollout.engine 'hf'")


def check_outcome_term(algo: AlgorithmConfig, rollouts_per_prompt: int, key: str) -> None:
    """The outcome term is group-normalised: with one rollout per prompt it is exactly 0."""
    if algo.alpha > 0 and rollouts_per_prompt < 2:
        raise ValueError(f"algorithm.alpha > 0 adds a group-normalised outcome advantage, which is exactly 0 "
                         f"with one rollout per prompt: set {key} >= 2 (a GRPO group) or algorithm.alpha: 0")
