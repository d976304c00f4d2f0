"""Whether the hardware computes in bfloat16 natively, and a warning when a config asks for bf16
where it is emulated.

On x86 CPUs without AVX-512 BF16 or AMX, PyTorch's and vLLM's bf16 matmuls are emulated: a
bf16 setting that is mopd's fastest on a CPU with native bf16 is then many times slower than
float32 (docs/benchmarks.md). Nothing fails, so without a warning the user only sees a slow run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def native_bf16(device: torch.device, flags: set[str] | None = None) -> bool | None:
    """True / False where known; None where it cannot be told (non-Linux CPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return None
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    if "asimd" in flags:  # Arm (aarch64): bf16 instructions are their own flag
        return "bf16" in flags
    return any(f in flags for f in NATIVE_BF16_CPU_FLAGS)


def bf16_settings(cfg) -> list[str]:
    """The config keys of a run (RunConfig) that ask for bfloat16 compute."""
    keys = []
    if cfg.student.dtype == "bfloat16":
        keys.append("student.dtype")
    if cfg.distributed.mixed_precision == "bf16":
        keys.append("distributed.mixed_precision")
    if cfg.rollout.engine == "vllm" and cfg.rollout.vllm.dtype == "bfloat16":
        keys.append("rollout.vllm.dtype")
    for t in cfg.teachers:
        vllm_dtype = t.vllm.dtype if t.kind == "vllm" and t.vllm is not None else None
        if (t.kind in ("hf", "vllm") and t.model.dtype == "bfloat16") or vllm_dtype == "bfloat16":
            keys.append(f"teachers.{t.name}")
    return keys


def warn_if_bf16_emulated(cfg, device: torch.device, flags: set[str] | None = None) -> bool:
    """Log one warning when `cfg` asks for bf16 on a device that emulates it; whether it did."""
    keys = bf16_settings(cfg)
    if not keys or native_bf16(device, flags) is not False:
        return False
    log.warning("%s ask(s) for bfloat16, but this %s has no native bf16 (no %s in its CPU flags): bf16 "
                "matmuls are emulated here, many times slower than float32. Use float32 on this machine "
                "(student.dtype: float32, distributed.mixed_precision: no, rollout.vllm.dtype: float32).",
                ", ".join(keys), device.type.upper(), " / ".join(NATIVE_BF16_CPU_FLAGS))
    return True
