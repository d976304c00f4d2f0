"""`mopd distill` end to end with a vLLM rollout engine and a vLLM teacher in one process.

The importance-sampling bounds are set to +-0.1%: a token is masked as soon as the engine's
log-prob differs from the trainer's, so `masked == 0` at every step says that each update's
weights reached the engine before the next rollout.
"""

import math

import pytest
from transformers import AutoModelForCausalLM

from mopd.models.tiny import char_tokenizer, tiny_model
from cli_runs import distill_cli
from mopd.rollout.vllm_engine import VLLMRolloutEngine
from tiny_vllm import distill_config

pytestmark = pytest.mark.vllm
STEPS = 4


def test_distill_with_vllm_rollouts_and_teacher(teacher_dir, tmp_path, monkeypatch):
    pushes = []
    real_push = VLLMRolloutEngine._push

    def counted_push(engine):
        pushes.append(1)
        real_push(engine)

    monkeypatch.setattr(VLLMRolloutEngine, "_push", counted_push)
    cfg = distill_config(tmp_path / "run", teacher_dir, STEPS)
    metrics = distill_cli(tmp_path, cfg)
    assert len(metrics) == STEPS
    assert len(pushes) == STEPS + 1  # the initial weights, then one push after each update
    for m in metrics:
        assert m["masked/all"] == 0.0, m
        assert m["completion_tokens"] > 0 and math.isfinite(m["reverse_kl/all"])
    # ... and the weights did move, so a stale engine would have shown.
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    init = tiny_model(char_tokenizer(), num_heads=2, seed=0)
    moved = max(float((a - b).abs().max()) for a, b in zip(final.state_dict().values(), init.state_dict().values()))
    assert moved > 1e-3, moved
