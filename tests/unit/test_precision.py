"""bf16 on hardware that emulates it: detected from the CPU's flags, warned about once."""

import logging

import torch

from mopd.config.schema import RunConfig
from mopd.models.precision import bf16_settings, cpu_flags, native_bf16, warn_if_bf16_emulated

AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}
CPU = torch.device("cpu")


def config(**kw) -> RunConfig:
    return RunConfig(student={"tiny": {}, **kw.pop("student", {})}, teachers=[{"name": "me", "kind": "self"}],
                     domains=[{"name": "rev", "teacher": "me", "prompts": {"builtin": "reversal"}}], **kw)


def test_native_bf16_from_cpu_flags(tmp_path):
    assert native_bf16(CPU, AVX512_BF16) is True
    assert native_bf16(CPU, AVX2_ONLY | {"avx512f"}) is False  # AVX-512 without its bf16 extension
    assert native_bf16(CPU, AVX2_ONLY | {"amx_bf16"}) is True
    assert native_bf16(CPU, {"fp", "asimd", "bf16"}) is True and native_bf16(CPU, {"fp", "asimd"}) is False
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") is None


def test_a_bf16_config_on_an_emulating_cpu_warns_once_naming_the_keys(caplog):
    cfg = config(student={"dtype": "bfloat16"}, distributed={"mixed_precision": "bf16"})
    assert bf16_settings(cfg) == ["student.dtype", "distributed.mixed_precision"]
    with caplog.at_level(logging.WARNING):
        assert warn_if_bf16_emulated(cfg, CPU, AVX2_ONLY)
        assert not warn_if_bf16_emulated(cfg, CPU, AVX512_BF16)
        assert not warn_if_bf16_emulated(config(), CPU, AVX2_ONLY)  # float32: nothing to say
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "student.dtype, distributed.mixed_precision" in msgs[0] and "emulated" in msgs[0]
