"""The `paper` preset: the paper's table under the paper's conditions, on tiny char-level models.

- Three domains with exact, sparse rewards and answers of 8-12 characters: reversing and sorting
  letter strings (`letters`), and an agentic one (`lookup_letters`: call a tool to read a hidden
  letter string, answer with it), all over one 10-letter alphabet, so that they interfere: RL on
  one domain lowers the others below the SFT init (the teacher x domain table of the report).
- Teachers trained by GRPO until their reward curve flattens.
- MOPD, Mix-RL, Cascade RL and off-policy finetuning sample the same number of sequences; each
  method's learning rate is the best of one sweep over the same grid on seed 0 (docs/results.md).
- Variants beside plain MOPD, on the same init, teachers and budget: the outcome-reward term,
  the top-k loss, the token-balanced and gap-driven mixtures, and co-evolution round 2.

Seeds run as separate commands (`--set seed=N --output-dir DIR`) and merge with `mopd report
DIR DIR DIR --out OUT`.
"""

from __future__ import annotations

from mopd.config.schema import AlgorithmConfig, MixtureConfig, ModelSpec, TinyModel
from mopd.pipeline.config import EvalStage, OffPolicyStage, PipelineConfig, PipelineDomain, SFTStage, rl_stage
from mopd.pipeline.variants import MOPDVariant

ALPHABET = 10  # letters a..j: every domain reads and writes the same characters
LENGTHS = {"min_len": 8, "max_len": 12}
ANSWER_TOKENS = 16  # per turn: 12 letters and the end token; the lookup call is 13 with its key


def paper_domains(n_train: int = 2000, n_eval: int = 100) -> list[PipelineDomain]:
    common = {"letters": ALPHABET, "n_train": n_train, "n_eval": n_eval, "seed": 0}
    return [
        PipelineDomain(name="reversal", builtin="letters", params={"task": "reverse", **LENGTHS, **common}),
        PipelineDomain(name="sorting", builtin="letters", params={"task": "sort", **LENGTHS, **common}),
        PipelineDomain(name="lookup", builtin="lookup_letters", params={"task": "copy", "key_len": 4, **LENGTHS,
                                                                        **common}),
    ]


def paper_variants() -> list[MOPDVariant]:
    return [
        MOPDVariant(name="alpha", alpha=1.0, rollouts_per_prompt=4),  # outcome term, 8 prompts x 4 rollouts
        MOPDVariant(name="topk", loss="topk", topk=16),
        MOPDVariant(name="tokens", mixture=MixtureConfig(mode="tokens", every=10)),
        MOPDVariant(name="gap", mixture=MixtureConfig(mode="gap", every=10)),
    ]


def paper(mopd_lr: float = 1e-4, grpo_lr: float = 3e-4, offpolicy_lr: float = 1e-3) -> PipelineConfig:
    """The learning rates are those the seed-0 sweep chose (docs/results.md)."""
    return PipelineConfig(
        output_dir="runs/paper",
        base=ModelSpec(tiny=TinyModel(seed=7)),
        domains=paper_domains(),
        sft=SFTStage(steps=450, lr=3e-3, batch_size=64),
        teacher=rl_stage(400, lr=3e-4, prompts_per_step=16, rollouts_per_prompt=8, max_new_tokens=ANSWER_TOKENS),
        mopd=rl_stage(300, lr=mopd_lr, prompts_per_step=32, max_new_tokens=ANSWER_TOKENS),
        # Mix-RL and Cascade RL: the teachers' GRPO batches at their own learning rate; their steps
        # follow from MOPD's budget (9,600 sequences: 75 steps of 128).
        baseline_rl=rl_stage(1, lr=grpo_lr, prompts_per_step=16, rollouts_per_prompt=8, max_new_tokens=ANSWER_TOKENS),
        offpolicy=OffPolicyStage(steps=300, lr=offpolicy_lr, batch_size=64),
        algorithm=AlgorithmConfig(),
        eval=EvalStage(samples=2, max_new_tokens=ANSWER_TOKENS, curve_points=6),
        rounds=2,
        variants=paper_variants(),
    )


def paper_micro() -> PipelineConfig:
    """The paper preset at smoke-test size: every stage, variant and round, a few steps each."""
    cfg = paper()
    data = cfg.model_dump()
    data.update(
        domains=[d.model_dump() for d in paper_domains(n_train=40, n_eval=8)],
        sft={"steps": 5, "lr": 3e-3, "batch_size": 16},
        teacher=rl_stage(2, prompts_per_step=4, rollouts_per_prompt=4, max_new_tokens=ANSWER_TOKENS).model_dump(),
        mopd=rl_stage(4, prompts_per_step=8, max_new_tokens=ANSWER_TOKENS).model_dump(),
        baseline_rl=rl_stage(1, prompts_per_step=4, rollouts_per_prompt=4, max_new_tokens=ANSWER_TOKENS).model_dump(),
        offpolicy={"steps": 3, "lr": 1e-3, "batch_size": 8, "samples_per_prompt": 1},
        eval={"samples": 1, "max_new_tokens": ANSWER_TOKENS, "curve_points": 2},
    )
    return PipelineConfig.model_validate(data)
