"""Load causal LMs and tokenizers from a HF directory or hub id, a GGUF file, or a tiny build."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mopd.config.schema import ModelSpec
from mopd.models.tiny import char_tokenizer, tiny_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(spec: ModelSpec):
    if spec.tiny is not None:
        return char_tokenizer()
    source, kwargs = _source(spec)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code, **kwargs)
    if tok.pad_token_id is None:
        # Padding is masked everywhere; any id works, EOS is the conventional choice.
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, tokenizer=None) -> PreTrainedModel:
    """A trainable float model on CPU in `spec.dtype`.

    GGUF weights are dequantised by transformers; they are copied into a plain model built from
    the same config because transformers refuses to train or save a GGUF-quantised model.
    """
    dtype = DTYPES[spec.dtype]
    if spec.tiny is not None:
        t = spec.tiny
        tok = tokenizer or char_tokenizer()
        return tiny_model(tok, t.hidden_size, t.num_layers, t.num_heads, seed=t.seed).to(dtype)
    source, kwargs = _source(spec)
    loaded = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=spec.trust_remote_code, **kwargs
    )
    if spec.gguf_file is None:
        return loaded
    config = AutoConfig.from_pretrained(source, **kwargs)
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    return plain


def _source(spec: ModelSpec) -> tuple[str, dict]:
    if spec.gguf_file is not None:
        gguf = Path(spec.gguf_file)
        if spec.path is None:
            if not gguf.is_file():
                raise FileNotFoundError(f"GGUF file {gguf} does not exist")
            return str(gguf.parent), {"gguf_file": gguf.name}
        return spec.path, {"gguf_file": spec.gguf_file}
    assert spec.path is not None
    return spec.path, {}


def save_pretrained(model: PreTrainedModel, tokenizer, directory: str | Path) -> None:
    """A plain HF directory (safetensors + config + tokenizer) that transformers and vLLM load as is."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
