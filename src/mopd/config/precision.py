"""`precision`: one choice for every dtype of a run.

A run's numbers are set in five places: the student's weights (`student.dtype`), autocast
(`distributed.mixed_precision`), float32 master weights for AdamW (`optim.master_weights`), the
vLLM engine (`rollout.vllm.dtype`) and each teacher (`teachers[].model.dtype`). Set one by one
they can disagree in ways that cost speed or accuracy without failing. `precision` names a
coherent combination and fills in those keys; a key also set by hand must agree with it (an
error names both). `precision: null` (the default) leaves the keys as they are written.

- `float32`: everything in float32. Exact log-prob agreement between trainer, engine and
  teachers; the choice on CPUs that emulate bf16.
- `bf16-mixed`: float32 weights, bf16 autocast for the student, bf16 teachers and engine. The
  usual GPU setting.
- `bf16`: bf16 student weights with float32 master weights for AdamW, bf16 teachers and engine.
  Half the weight memory; the fastest setting measured on CPUs with native bf16.
- `fp16-mixed`: float32 weights, fp16 autocast with a loss scaler (GPUs only).
- `auto`: `bf16-mixed` on a GPU with bf16, `fp16-mixed` on one without; on a CPU `bf16` where
  it computes bf16 natively (AVX-512 BF16, AMX, Arm BF16) and `float32` where bf16 is emulated.
"""

from __future__ import annotations

import logging
from typing import Literal

log = logging.getLogger(__name__)

Precision = Literal["float32", "bf16-mixed", "bf16", "fp16-mixed", "auto"]

# key path -> value, per choice; "teachers" stands for every teachers[].model.dtype.
SETTINGS: dict[str, dict[str, object]] = {
    "float32": {"student.dtype": "float32", "distributed.mixed_precision": "no", "optim.master_weights": None,
                "rollout.vllm.dtype": "float32", "teachers": "float32"},
    "bf16-mixed": {"student.dtype": "float32", "distributed.mixed_precision": "bf16",
                   "optim.master_weights": None, "rollout.vllm.dtype": "bfloat16", "teachers": "bfloat16"},
    "bf16": {"student.dtype": "bfloat16", "distributed.mixed_precision": "no", "optim.master_weights": True,
             "rollout.vllm.dtype": "bfloat16", "teachers": "bfloat16"},
    "fp16-mixed": {"student.dtype": "float32", "distributed.mixed_precision": "fp16",
                   "optim.master_weights": None, "rollout.vllm.dtype": "float16", "teachers": "float16"},
}


def resolve_auto(device: str = "auto") -> str:
    """The choice `auto` stands for on this machine (`device`: distributed.device)."""
    import torch

    from mopd.models.precision import native_bf16

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    return "bf16" if native_bf16(torch.device("cpu")) else "float32"


def apply_precision(raw: dict) -> dict:
    """`raw` (a run config as read, before validation) with `precision` expanded into its keys."""
    choice = raw.get("precision")
    if choice is None or not isinstance(raw, dict):
        return raw
    if choice == "auto":
        choice = resolve_auto(_get(raw, "distributed.device") or "auto")
        log.info("precision: auto is %r on this machine", choice)
    if choice not in SETTINGS:
        return raw  # the schema's Literal names the allowed values
    out = {**raw, "precision": choice}
    for key, value in SETTINGS[choice].items():
        if key == "teachers":
            out["teachers"] = [_teacher_dtype(t, value, choice) for t in out.get("teachers") or []]
        else:
            _set(out, key, value, choice)
    return out


def _teacher_dtype(teacher, dtype, choice: str):
    teacher = _as_dict(teacher)
    if teacher.get("model") is None:
        return teacher  # self / remote teachers hold no weights of their own here
    model = _as_dict(teacher["model"])
    given = model.get("dtype")
    if given is not None and given != dtype:
        raise ValueError(f"precision {choice!r} sets teachers.{teacher.get('name', '?')}.model.dtype {dtype!r}, "
                         f"but it is {given!r}; remove one of the two")
    return {**teacher, "model": {**model, "dtype": dtype}}


def _as_dict(node) -> dict:
    """A config section as a dict of the keys it was given (a section built in code keeps only the
    fields set explicitly, so a default is not mistaken for a hand-set value)."""
    if hasattr(node, "model_dump"):
        return node.model_dump(exclude_unset=True)
    return dict(node) if isinstance(node, dict) else {}


def _get(raw: dict, path: str):
    node = raw
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(raw: dict, path: str, value, choice: str) -> None:
    """Set `path` in nested dicts (copying each level), refusing a different value set by hand."""
    parts = path.split(".")
    node = raw
    for part in parts[:-1]:
        child = _as_dict(node.get(part))
        node[part] = child
        node = child
    given = node.get(parts[-1])
    if given is not None and given != value:
        raise ValueError(f"precision {choice!r} sets {path} {value!r}, but it is {given!r}; remove one of the two")
    node[parts[-1]] = value
