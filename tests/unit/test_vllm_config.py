"""The vLLM keys of a run config: `rollout` and teachers of kind 'vllm' (no vLLM needed here)."""

import pytest

from mopd.build import build_engine
from mopd.config.load import ConfigError, load_config
from mopd.config.schema import RunConfig
from mopd.models.loading import load_model, load_tokenizer
from mopd.rollout.hf_engine import HFRolloutEngine


def config(teacher: dict | None = None, **top) -> dict:
    return {
        "student": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "teachers": [teacher or {"name": "t", "kind": "self"}],
        "domains": [{"name": "rev", "teacher": "t", "prompts": {"builtin": "reversal"}}],
        **top,
    }


def load(data: dict, overrides=()) -> RunConfig:
    return load_config(None, RunConfig, list(overrides), data=data)


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        load(data)
    return str(e.value)


def test_rollout_defaults_to_transformers_and_takes_vllm_settings():
    cfg = load(config())
    assert cfg.rollout.engine == "hf"
    engine = build_engine(cfg.rollout, load_model(cfg.student), load_tokenizer(cfg.student))
    assert isinstance(engine, HFRolloutEngine)  # no vLLM import on the default path
    cfg = load(config(), ["rollout.engine=vllm", "rollout.vllm.kv_cache_gb=0.5", "rollout.vllm.dtype=float32"])
    assert (cfg.rollout.engine, cfg.rollout.vllm.kv_cache_gb, cfg.rollout.vllm.dtype) == ("vllm", 0.5, "float32")


def test_bad_rollout_settings_name_the_key():
    assert "rollout.engine" in error_of(config(rollout={"engine": "sglang"}))
    assert "gpu_memory_utilization" in error_of(config(rollout={"gpu_memory_utilization": 1.5}))


def test_vllm_teacher_needs_a_model_directory():
    ok = load(config({"name": "t", "kind": "vllm", "model": {"path": "some/dir"}, "vllm": {"enforce_eager": True}}))
    assert ok.teachers[0].kind == "vllm" and ok.teachers[0].vllm.enforce_eager
    assert "teachers.0.model: Field required" in error_of(config({"name": "t", "kind": "vllm"}))
    assert "HF model directory" in error_of(config({"name": "t", "kind": "vllm", "model": {"tiny": {}}}))
    assert "['vllm'] only apply to kind 'vllm'" in error_of(
        config({"name": "t", "model": {"path": "d"}, "vllm": {"dtype": "float32"}}))
