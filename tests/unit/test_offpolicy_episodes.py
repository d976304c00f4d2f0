"""The off-policy baseline on an agentic domain plays the teacher's episodes through the
episode driver, keeps those that earn reward 1, and fine-tunes on the teacher's turns only."""

from __future__ import annotations

import pytest

import mopd.pipeline.methods as methods
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.pipeline.config import EvalStage, OffPolicyStage, PipelineConfig, PipelineDomain, rl_stage
from mopd.pipeline.stages import Domains
from mopd.rollout.scripted import ScriptedEngine
from mopd.rollout.types import Rollout


def test_offpolicy_keeps_verified_teacher_episodes_and_trains_on_their_turns(tmp_path, monkeypatch):
    tok = char_tokenizer()
    save_pretrained(tiny_model(tok, seed=1), tok, tmp_path / "init")
    cfg = PipelineConfig(domains=[PipelineDomain(name="lookup", builtin="lookup", params={"n_train": 8, "n_eval": 2})],
                         mopd=rl_stage(1, prompts_per_step=8, max_new_tokens=16),
                         offpolicy=OffPolicyStage(steps=2, batch_size=4), eval=EvalStage(samples=1, max_new_tokens=8))
    doms = Domains.build(cfg)
    answers = iter(range(10**6))

    def teacher(history):  # looks the key up every time, copies the value back every other episode
        text = tok.decode(history, skip_special_tokens=True)
        if "obs:" not in text:
            return f"call:get({text[5:8]})"
        return text.rsplit("obs:", 1)[-1].strip() if next(answers) % 2 else "000"

    engines = []
    monkeypatch.setattr(methods, "sampling_engine",
                        lambda *a: engines.append(ScriptedEngine(tok, teacher)) or engines[-1])
    trained = []
    real_sft = methods.run_sft
    monkeypatch.setattr(methods, "run_sft", lambda model, t, rows, *a, **k: trained.append(rows) or
                        real_sft(model, t, rows, *a, **k))

    result = methods.offpolicy(cfg, doms, str(tmp_path / "init"), {"lookup": str(tmp_path / "init")},
                               tmp_path / "out")
    assert len(engines[0].calls) == 2  # two rounds of turns: the episodes were played, not sampled once
    (rows,) = trained
    assert len(rows) == 4 and all(isinstance(r, Rollout) and r.reward == 1.0 and r.finished for r in rows)
    for r in rows:
        key, value = r.example.meta["key"], r.example.answer
        model_text = tok.decode([t for t, m in zip(r.token_ids, r.gen_mask) if m])
        assert model_text == f"call:get({key})<eos>{value}<eos>"  # the observation is context only
        assert f"obs:{value}" in tok.decode(r.token_ids)
    assert result.sequences == 8 and "lookup" in result.scores
