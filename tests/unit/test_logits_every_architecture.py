"""The chunked log-probs equal the model's own logits, for every causal LM that transformers ships.

Each architecture in transformers' causal-LM mapping that builds from a small config is built
tiny, and `token_logprobs` (trunk + head a chunk at a time, or the plain path where the model
post-processes its logits) is compared with `log_softmax(model(...).logits)` at every scored
position. Models that rescale logits (Granite's `logits_scaling`, Cohere's `logit_scale`,
Gemma's soft-capping, ...) are the reason this exists: a head-only shortcut silently drops that.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mopd.models.logprobs import token_logprobs

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=128, n_embd=32, n_layer=1, n_head=4,
             d_model=32, num_layers=1, num_heads=4, ffn_dim=64, n_positions=128, hidden_dim=32, d_ff=64)
# Logit post-processing made visible on tiny random weights (their logits are near 0, where a
# soft-cap is the identity): caps and scales far from 1.
VISIBLE = dict(final_logit_softcapping=0.05, logit_scale=0.125, logits_scaling=8.0)
MAX_PARAMS = 5_000_000
MIN_BUILT = 80  # transformers 5.x builds ~95 of its ~180 causal LMs from this small config


def _small_config(model_type: str):
    cfg = AutoConfig.for_model(model_type)
    for c in {id(cfg): cfg, id(cfg.get_text_config()): cfg.get_text_config()}.values():
        for k, v in {**SMALL, **VISIBLE}.items():
            if hasattr(c, k) and getattr(c, k) is not None:
                setattr(c, k, v)
    return cfg


def _build(model_type: str):
    """The tiny model, or None when this architecture does not build from a small config here."""
    try:
        cfg = _small_config(model_type)
        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        if n > MAX_PARAMS:
            return None
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(cfg).eval()
    except Exception:  # noqa: BLE001 - missing optional deps, configs needing more fields: not buildable
        return None


def test_chunked_logprobs_equal_the_models_own_logits_for_every_architecture():
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    built, wrong = [], {}
    gen = torch.Generator().manual_seed(0)
    for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        model = _build(model_type)
        if model is None:
            continue
        vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None \
            else model.config.get_text_config().vocab_size
        ids = torch.randint(3, min(vocab, 90), (2, 12), generator=gen)
        ids[:, :5] = ids[0, :5]  # a shared prefix, as chat rollouts have
        attn = torch.ones_like(ids)
        positions = torch.zeros_like(ids, dtype=torch.bool)
        positions[:, 6:] = True
        try:
            with torch.no_grad():
                ref = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
                got = token_logprobs(model, ids, attn, positions, chunk_size=3, share_prefix=4).logprobs
        except Exception as e:  # noqa: BLE001 - a model whose own forward fails here is not ours to test
            if "ref" not in locals():
                continue
            wrong[model_type] = f"token_logprobs raised {e!r}"[:200]
            continue
        built.append(model_type)
        want = torch.zeros_like(got)
        want[:, 1:] = ref[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        want[~positions] = 0
        err = float((got - want).abs().max())
        if err > 1e-4:
            wrong[model_type] = f"max |diff| {err:.3g} nats"
        del ref
    assert len(built) >= MIN_BUILT, f"only {len(built)} architectures built: {built}"
    assert not wrong, wrong
    for needed in ("llama", "granite", "granitemoe", "cohere", "gemma2", "gemma3_text", "hyperclovax"):
        assert needed in built, f"{needed} did not build; the test would not cover it"
