"""`precision`: one choice fills in every dtype key; a hand-set key that disagrees is an error."""

import pytest

from mopd.config import precision as P
from mopd.config.load import ConfigError, load_config
from mopd.config.schema import RunConfig


def run(**extra) -> dict:
    return {"student": {"path": "s"}, "teachers": [{"name": "t", "model": {"path": "t"}}, {"name": "me", "kind": "self"}],
            "domains": [{"name": "d", "prompts": {"builtin": "reversal"}, "teacher": "t"},
                        {"name": "e", "prompts": {"builtin": "sorting"}, "teacher": "me"}], **extra}


def dtypes(cfg: RunConfig) -> tuple:
    return (cfg.student.dtype, cfg.distributed.mixed_precision, cfg.optim.master_weights, cfg.rollout.vllm.dtype,
            cfg.teachers[0].model.dtype)


@pytest.mark.parametrize("choice,expected", [
    ("float32", ("float32", "no", None, "float32", "float32")),
    ("bf16-mixed", ("float32", "bf16", None, "bfloat16", "bfloat16")),
    ("bf16", ("bfloat16", "no", True, "bfloat16", "bfloat16")),
    ("fp16-mixed", ("float32", "fp16", None, "float16", "float16")),
])
def test_each_choice_sets_every_dtype_key(choice, expected):
    cfg = load_config(None, RunConfig, data=run(precision=choice))
    assert dtypes(cfg) == expected and cfg.precision == choice


def test_without_a_choice_the_keys_stay_as_written():
    cfg = load_config(None, RunConfig, data=run(student={"path": "s", "dtype": "bfloat16"}))
    assert dtypes(cfg) == ("bfloat16", "no", None, None, "float32") and cfg.precision is None


def test_a_hand_set_key_that_disagrees_is_named():
    with pytest.raises(ConfigError, match="precision 'bf16' sets student.dtype 'bfloat16', but it is 'float32'"):
        load_config(None, RunConfig, data=run(precision="bf16", student={"path": "s", "dtype": "float32"}))
    with pytest.raises(ConfigError, match="teachers.t.model.dtype"):
        load_config(None, RunConfig, data=run(precision="float32",
                                              teachers=[{"name": "t", "model": {"path": "t", "dtype": "bfloat16"}},
                                                        {"name": "me", "kind": "self"}]))
    agreeing = load_config(None, RunConfig, data=run(precision="bf16", student={"path": "s", "dtype": "bfloat16"}))
    assert agreeing.student.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, RunConfig, data=run(precision="bf17"))


def test_auto_follows_what_the_hardware_computes_natively(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("mopd.models.precision.cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert load_config(None, RunConfig, data=run(precision="auto")).precision == "bf16"
    monkeypatch.setattr("mopd.models.precision.cpu_flags", lambda: {"avx2", "fma"})
    cfg = load_config(None, RunConfig, data=run(precision="auto"))
    assert cfg.precision == "float32" and dtypes(cfg)[0] == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert P.resolve_auto("auto") == "bf16-mixed" and P.resolve_auto("cpu") == "float32"
