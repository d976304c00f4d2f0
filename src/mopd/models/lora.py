"""LoRA students (peft): build the adapter, merge it into plain weights, and save / load it.

`student.lora` takes peft's `LoraConfig` fields (`r`, `lora_alpha`, `lora_dropout`,
`target_modules`...), checked against peft's own dataclass so a typo names the key, or
`{path: ADAPTER_DIR}` to continue training an existing adapter. Only the adapter trains: the
base weights stay frozen, which is what makes a `kind: self` teacher free (the base model is
the student with the adapter switched off; see `mopd.teachers.hf_teacher.AdapterOffTeacher`).

The vLLM rollout engine is pushed merged weights: W + scale * B @ A per adapted layer, under
the base model's parameter names, computed next to the trained model without changing it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

import torch

# Keys that are ours, or set by mopd: the task type is always a causal LM.
_OWN_KEYS = {"path"}
_SET_BY_MOPD = {"task_type", "peft_type", "base_model_name_or_path", "inference_mode", "revision"}
# The short names people type, from other trainers' configs.
_HINTS = {"alpha": "lora_alpha", "dropout": "lora_dropout", "rank": "r", "target": "target_modules"}
BASE_SPEC_FILE = "mopd_base_model.json"  # the base model of an adapter directory mopd wrote


def require_peft():
    try:
        import peft
    except ImportError as e:
        raise ValueError("student.lora needs peft: pip install 'mopd[peft]'") from e
    return peft


def lora_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(require_peft().LoraConfig)} - _SET_BY_MOPD


def check_lora(options: dict) -> dict:
    """Validate `student.lora` (raises ValueError naming the bad key); returns it unchanged."""
    if "path" in options:
        extra = sorted(set(options) - {"path"})
        if extra:
            raise ValueError(f"lora: with 'path' (an existing adapter, which carries its own config) give no "
                             f"other key; got {extra}")
        if not (Path(options["path"]) / "adapter_config.json").is_file():
            raise ValueError(f"lora.path {options['path']}: not a peft adapter directory (no adapter_config.json)")
        return options
    allowed = lora_fields()
    for key in options:
        if key not in allowed:
            guess = _HINTS.get(key) or next(iter(difflib.get_close_matches(key, sorted(allowed), n=1)), None)
            hint = f" (did you mean {guess!r}?)" if guess else ""
            raise ValueError(f"lora: unknown key {key!r}{hint}; peft's LoraConfig takes {sorted(allowed)}")
    try:
        lora_config(options)
    except (TypeError, ValueError) as e:  # peft's own checks of values (e.g. conflicting options)
        raise ValueError(f"lora: {e}") from None
    return options


def uses_dora(options: dict) -> bool:
    """Whether `student.lora` asks for DoRA (`use_dora`), inline or in an existing adapter's config."""
    if "path" in options:
        return bool(json.loads((Path(options["path"]) / "adapter_config.json").read_text()).get("use_dora"))
    return bool(options.get("use_dora"))


def lora_config(options: dict):
    return require_peft().LoraConfig(task_type="CAUSAL_LM", **options)


def apply_lora(model, options: dict, seed: int = 0):
    """`model` with a trainable LoRA adapter (new, or read from `options['path']`); base weights frozen.

    A new adapter's A matrices are drawn from `seed` alone, not from whatever the global RNG
    holds, so two runs of one config start from the same adapter (and a resumed run matches).
    """
    peft = require_peft()
    if "path" in options:
        return peft.PeftModel.from_pretrained(model, options["path"], is_trainable=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, lora_config(options))


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights of base + adapter as one plain model, under the base model's names.

    W + scale * B @ A for each adapted layer (peft's `get_delta_weight`, the term its
    `merge_and_unload` adds in place), computed beside the trained model, whose tensors are not
    touched. Unadapted weights are the model's own tensors; the adapted layers' merged weights
    are new memory until the caller drops them (a push: one copy of those layers, briefly).
    """
    from peft.tuners.lora import LoraLayer

    base, adapter = model.get_base_model(), model.active_adapter
    layers = {f"{name}.weight": m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out = {}
    for key, t in base.state_dict().items():
        if ".lora_" in key or ".original_module." in key:
            continue  # adapter factors, and the frozen originals of modules_to_save
        plain = key.replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")
        layer = layers.get(plain)
        if layer is not None and not layer.merged and adapter in layer.active_adapters:
            if layer.use_dora.get(adapter):
                raise NotImplementedError("merging a DoRA adapter (use_dora) is not supported; use plain LoRA")
            # Added in the promoted dtype and cast back, as merge_and_unload's in-place add does.
            t = torch.add(t, layer.get_delta_weight(adapter)).to(t.dtype)
        out[plain] = t.detach()
    return out


def save_base_spec(directory: str | Path, spec) -> None:
    """Next to an adapter: which base model it belongs to (a tiny build has no path peft could record)."""
    data = spec.model_dump(exclude={"lora"}, exclude_none=True)
    (Path(directory) / BASE_SPEC_FILE).write_text(json.dumps(data, indent=1))


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_adapter_state(model, adapter_dir: str | Path) -> None:
    """The adapter weights of a checkpoint into `model` (a peft model), every one of them."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    result = set_peft_model_state_dict(model, load_peft_weights(str(adapter_dir), device="cpu"))
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{adapter_dir}: the adapter does not fit the student (missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]}); was it trained with this student.lora?")
