"""Settings that would do nothing, or train off-policy without saying so, are refused or counted."""

from __future__ import annotations

import pytest
import torch

from mopd.config.schema import AlgorithmConfig, ISCorrection, RunConfig
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.objectives.mopd import MOPDObjective
from mopd.pipeline.presets import PRESETS
from mopd.rollout.types import Rollout, collate
from mopd.teachers.router import TeacherRouter
from mopd.distributed.runtime import check_precision
from mopd.training.update import update_step


def run_config(**sections) -> dict:
    return {"student": {"tiny": {}}, "teachers": [{"name": "me", "kind": "self"}],
            "domains": [{"name": "rev", "teacher": "me", "prompts": {"builtin": "reversal"}}], **sections}


def test_ahead_without_is_correction_is_refused():
    with pytest.raises(ValueError, match="is_correction"):
        RunConfig(**run_config(sampling={"ahead": 1}, rollout={"engine": "vllm"}, algorithm={"is_correction": None}))
    RunConfig(**run_config(sampling={"ahead": 1}, rollout={"engine": "vllm"}))  # the default correction


def test_outcome_term_with_one_rollout_per_prompt_is_refused():
    with pytest.raises(ValueError, match="rollouts_per_prompt >= 2"):
        RunConfig(**run_config(algorithm={"alpha": 0.5}))
    RunConfig(**run_config(algorithm={"alpha": 0.5}, sampling={"rollouts_per_prompt": 4}))
    data = PRESETS["micro"]().model_dump()
    data["algorithm"]["alpha"] = 0.5
    with pytest.raises(ValueError, match="mopd.sampling.rollouts_per_prompt"):
        type(PRESETS["micro"]()).model_validate(data)


def test_fsdp2_with_a_16_bit_student_needs_mixed_precision():
    bf16 = RunConfig(**run_config(student={"tiny": {}, "dtype": "bfloat16"}))
    with pytest.raises(ValueError, match="mixed_precision: bf16"):
        check_precision(bf16, sharded=True)
    check_precision(bf16, sharded=False)  # mopd's own master weights cover one process and DDP
    check_precision(RunConfig(**run_config(student={"tiny": {}, "dtype": "bfloat16"},
                                           distributed={"mixed_precision": "bf16"})), sharded=True)


def _batch_and_objective(sample_shift: float, is_correction: bool = True):
    tok = char_tokenizer()
    g = torch.Generator().manual_seed(0)
    rollouts = [Rollout.from_completion("d", [5, 6, 7], torch.randint(8, 40, (6,), generator=g).tolist(),
                                        [-3.0 + sample_shift] * 6) for _ in range(4)]
    batch = collate(rollouts, tok.pad_token_id)
    algo = AlgorithmConfig(is_correction=ISCorrection(eps_low=0.5, eps_high=2.0) if is_correction else None)
    return batch, {"lp_teacher": torch.full(batch.input_ids.shape, -1.0)}, MOPDObjective(TeacherRouter({}, {}), algo)


def test_a_step_with_every_token_masked_does_not_move_the_weights_or_the_schedule():
    model = tiny_model(char_tokenizer(), hidden_size=32, num_layers=1, num_heads=2, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    batch, signals, obj = _batch_and_objective(0.0, is_correction=False)
    # A first, real step gives AdamW momentum, which alone would move the weights again.
    scalars, _ = update_step(model, opt, sched, batch, signals, obj, 1, None)
    assert scalars["skipped_empty"] == 0.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr_before = sched.get_last_lr()[0]
    # Sampling log-probs 100 nats above the policy's: every ratio is ~0, every token masked.
    batch, signals, obj = _batch_and_objective(100.0)
    scalars, tok = update_step(model, opt, sched, batch, signals, obj, 1, None)
    assert scalars["skipped_empty"] == 1.0
    assert float(tok["masked"][batch.gen_mask].mean()) == 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert sched.get_last_lr()[0] == lr_before
