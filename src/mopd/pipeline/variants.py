"""MOPD variants run beside plain MOPD in one table, on the same SFT init, teachers and budget.

A variant changes only what it names: the outcome-reward term (`alpha`, with several rollouts
per prompt so that a group has something to normalise over), the loss (`topk`), how the
domain mixture moves (`mixture: {mode: tokens | gap}`), a LoRA student (`lora`, usually with
its own `lr`), or a `self_anchor` mixed into every domain's teacher. Steps and sequences per step stay those
of the `mopd` stage, so every variant samples the same number of sequences as plain MOPD.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mopd.config.models import LoraOptions
from mopd.config.schema import MixtureConfig, Strict


class MOPDVariant(Strict):
    name: str  # the row's label and its stage directory (mopd_<name>)
    alpha: float | None = Field(None, ge=0)  # outcome-reward weight (algorithm.alpha)
    loss: str | None = None  # sampled | topk (algorithm.loss)
    topk: int | None = Field(None, gt=0)
    rollouts_per_prompt: int | None = Field(None, gt=0)  # prompts per step shrink to keep the budget
    mixture: MixtureConfig | None = None
    lora: LoraOptions = None  # the student trains a LoRA adapter (peft's LoraConfig fields)
    self_anchor: float | None = Field(None, gt=0, lt=1)  # weight of the student's start in each teacher mixture
    lr: float | None = Field(None, gt=0)  # the stage's learning rate (a LoRA adapter wants a larger one)

    @model_validator(mode="after")
    def _check(self) -> "MOPDVariant":
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"variant name {self.name!r}: letters, digits, - and _ only (it names a directory)")
        return self


def variant_config(cfg, v: MOPDVariant):
    """The pipeline config of one variant: the mopd stage and algorithm with the variant's changes."""
    algo = cfg.algorithm.model_copy(update={k: getattr(v, k) for k in ("alpha", "loss", "topk")
                                            if getattr(v, k) is not None})
    sampling = cfg.mopd.sampling
    if v.rollouts_per_prompt is not None:
        per_step = cfg.mopd.sequences_per_step
        if per_step % v.rollouts_per_prompt:
            raise ValueError(f"variant {v.name!r}: {per_step} sequences per step do not split into groups of "
                             f"{v.rollouts_per_prompt}")
        sampling = sampling.model_copy(update={"prompts_per_step": per_step // v.rollouts_per_prompt,
                                               "rollouts_per_prompt": v.rollouts_per_prompt})
    if v.mixture is not None:
        sampling = sampling.model_copy(update={"mixture": v.mixture})
    update = {"sampling": sampling, **{k: getattr(v, k) for k in ("lora", "self_anchor") if getattr(v, k) is not None}}
    if v.lr is not None:
        update["optim"] = cfg.mopd.optim.model_copy(update={"lr": v.lr})
    stage = cfg.mopd.model_copy(update=update)  # validated with the whole config below
    data = cfg.model_dump()
    data.update(algorithm=algo.model_dump(), mopd=stage.model_dump(), variants=[])
    return type(cfg).model_validate(data)
