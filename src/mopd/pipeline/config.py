"""The reproduction pipeline's configuration and its built-in presets.

One file describes the whole experiment of the paper's table (docs/method.md): the base model, the domains,
and the settings of every stage (SFT init, domain teachers, MOPD, baselines, evaluation).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mopd.config.models import LoraOptions
from mopd.config.precision import Precision
from mopd.config.schema import (AlgorithmConfig, DistributedConfig, ModelSpec, OptimConfig, RolloutConfig, SamplingConfig,
                                Strict, TeacherPoolConfig, TinyModel, VerifierConfig, check_outcome_term)
from mopd.pipeline.variants import MOPDVariant


class PipelineDomain(Strict):
    name: str
    builtin: str  # a built-in domain or python:/path/file.py[:attr]
    params: dict = Field(default_factory=dict)
    weight: float = Field(1.0, ge=0)


class SFTStage(Strict):
    steps: int = Field(150, gt=0)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, gt=0)


class RLStage(Strict):
    """An on-policy stage (domain teachers, MOPD, Mix-RL, Cascade RL): the `sampling` and `optim`
    sections of a `mopd distill` config. The stage is built as a run config from these, the
    pipeline's shared sections (`rollout`, `algorithm`, `teacher_pool`, `distributed`) and its
    objective, by the same builder as `mopd distill` (pipeline/stages.py: stage_run_config)."""

    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(prompts_per_step=32, max_new_tokens=8))
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=3e-4, steps=100, warmup_steps=5))
    # The student trains a LoRA adapter (peft's LoraConfig fields, as `student.lora` of a run
    # config); the stage's model directory holds the adapter merged in, a plain HF model.
    lora: LoraOptions = None
    # The mopd stage only: each domain's teacher mixed with the student's frozen start (a `self`
    # teacher) at this weight, an anchor that keeps the student near where it began.
    self_anchor: float | None = Field(None, gt=0, lt=1)

    @property
    def sequences_per_step(self) -> int:
        return self.sampling.prompts_per_step * self.sampling.rollouts_per_prompt


def rl_stage(steps: int, lr: float = 3e-4, prompts_per_step: int = 32, rollouts_per_prompt: int = 1,
             max_new_tokens: int = 8, **optim) -> RLStage:
    """A stage from the few settings presets change; warm-up: 5 steps, or a tenth of a short stage."""
    optim.setdefault("warmup_steps", min(5, steps // 10))
    return RLStage(sampling=SamplingConfig(prompts_per_step=prompts_per_step, rollouts_per_prompt=rollouts_per_prompt,
                                           max_new_tokens=max_new_tokens),
                   optim=OptimConfig(lr=lr, steps=steps, **optim))


class OffPolicyStage(Strict):
    samples_per_prompt: int = Field(1, gt=0)  # teacher rollouts per prompt, until the budget is spent
    steps: int = Field(150, gt=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, gt=0)


class EvalStage(Strict):
    samples: int = Field(4, gt=0)
    max_new_tokens: int = Field(8, gt=0)
    curve_points: int = Field(4, gt=0)  # evaluations along MOPD and Mix-RL training


class PipelineConfig(Strict):
    output_dir: str = "runs/reproduce"
    seed: int = 0
    base: ModelSpec = Field(default_factory=lambda: ModelSpec(tiny=TinyModel(seed=7)))
    domains: list[PipelineDomain] = Field(min_length=1)
    sft: SFTStage = Field(default_factory=SFTStage)
    teacher: RLStage = Field(default_factory=lambda: rl_stage(300, prompts_per_step=16, rollouts_per_prompt=8))
    mopd: RLStage = Field(default_factory=lambda: rl_stage(400))
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    # Shared by every on-policy stage, as in a `mopd distill` config: the rollout engine (hf or
    # vllm), how many local teachers stay loaded, the device and mixed precision.
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    precision: Precision | None = None  # every on-policy stage's dtypes, as in a run config
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)  # timeouts and isolation of verifiers
    teacher_pool: TeacherPoolConfig = Field(default_factory=TeacherPoolConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    baselines: list[str] = Field(default_factory=lambda: ["mix_rl", "cascade_rl", "offpolicy", "merge_avg",
                                                          "merge_task"])
    cascade_order: list[str] | None = None
    task_arithmetic_scale: float = 1.0
    offpolicy: OffPolicyStage = Field(default_factory=OffPolicyStage)
    eval: EvalStage = Field(default_factory=EvalStage)
    rounds: int = Field(1, ge=1, le=3)  # 2: co-evolution, new teachers start from the MOPD student
    # GRPO settings of Mix-RL and Cascade RL (their own learning rate); None: the teachers' settings.
    baseline_rl: RLStage | None = None
    variants: list[MOPDVariant] = Field(default_factory=list)  # MOPD variants beside plain MOPD

    @model_validator(mode="after")
    def _check(self) -> "PipelineConfig":
        names = [d.name for d in self.domains]
        known = {"mix_rl", "cascade_rl", "offpolicy", "merge_avg", "merge_task"}
        bad = [b for b in self.baselines if b not in known]
        if bad:
            raise ValueError(f"unknown baselines {bad}; choose from {sorted(known)}")
        check_outcome_term(self.algorithm, self.mopd.sampling.rollouts_per_prompt, "mopd.sampling.rollouts_per_prompt")
        if len({v.name for v in self.variants}) != len(self.variants):
            raise ValueError("variants: each needs its own name")
        for key in ("teacher", "baseline_rl"):
            stage = getattr(self, key)
            if stage is not None and stage.self_anchor is not None:
                raise ValueError(f"{key}.self_anchor: a GRPO stage has no teacher to mix the anchor with "
                                 "(mopd stage only)")
        if self.cascade_order is not None and sorted(self.cascade_order) != sorted(names):
            raise ValueError(f"cascade_order {self.cascade_order} must list each domain once: {names}")
        return self
