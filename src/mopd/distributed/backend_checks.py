"""Combinations a distributed backend cannot train correctly (refused before anything loads),
and launch settings a backend silently drops (warned about)."""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger("mopd.distributed.runtime")  # where these messages were always logged


def check_precision(cfg, sharded: bool) -> None:
    """FSDP2 keeps its own float32 master weights only with mixed precision on: with
    `mixed_precision: no` it shards the weights as loaded, and AdamW would step a 16-bit student's
    weights in place, where updates of a distillation learning rate round away."""
    if sharded and cfg.student.dtype != "float32" and cfg.distributed.mixed_precision == "no":
        raise ValueError(
            f"FSDP2 with student.dtype {cfg.student.dtype} and distributed.mixed_precision 'no' steps the "
            f"{cfg.student.dtype} weights in place (no float32 master copy), so small updates round away. "
            "Set student.dtype: float32 and distributed.mixed_precision: bf16 (FSDP2 then keeps float32 "
            "sharded weights and computes in bf16)")


def check_engines(cfg, world: int, sharded: bool = False) -> None:
    """A vLLM rollout engine runs in each training process (vLLM joins the launcher's processes)
    and takes that process's whole weights at every push, which FSDP2 does not hold. (vLLM
    teachers load their own weights, so they run under any backend.)"""
    if world > 1 and sharded and cfg.rollout.engine == "vllm":
        raise ValueError("rollout.engine 'vllm' runs one engine in each training process and pushes it that "
                         "process's whole weights, which FSDP2 shards; under FSDP2 use rollout.engine 'hf', "
                         "or DDP / DeepSpeed ZeRO-2 with 'vllm'")


def _warn_if_launch_setting_dropped(kind) -> None:
    """accelerate applies a launch config's FSDP or DeepSpeed only on GPU-like devices; on CPU
    processes it silently runs DDP (or one process). Say so: the user asked for sharding."""
    from accelerate.utils import DistributedType

    asked = tuple(wanted for var, wanted in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                                              ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED))
                  if os.environ.get(var, "false").lower() == "true" and kind != wanted)
    if asked:
        _warn_dropped(kind, asked)


@functools.cache  # once per process: a run builds several accelerators (stages, SFT)
def _warn_dropped(kind, asked: tuple) -> None:
    for wanted in asked:
        log.warning("the launch asked for %s, but accelerate runs this as %s (it applies %s only on GPUs, "
                    "not on CPU processes): the model is not sharded", wanted.value, kind.value, wanted.value)
