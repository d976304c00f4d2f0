"""A LoRA (peft) student in the vLLM rollout engine: it is pushed the merged weights (base +
adapter, under the base's names), and samples with the log-probs the trainer computes."""

import pytest
import torch

from tiny_vllm import OPTS, vllm_tiny
from mopd.models.logprobs import token_logprobs
from mopd.models.lora import apply_lora
from mopd.rollout.vllm_engine import VLLMRolloutEngine

pytestmark = pytest.mark.vllm

TEXTS = ["abc", "hello world", "sort 3 1 2", "reverse: abcdef"]


def trainer_logprobs(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    gen = torch.zeros_like(ids, dtype=torch.bool)
    gen[0, len(prompt):] = True
    with torch.no_grad():
        return token_logprobs(model, ids, torch.ones_like(ids), gen).logprobs[0, len(prompt):]


def test_pushed_merged_weights_give_the_trainers_logprobs():
    base, tok = vllm_tiny(seed=5)
    model = apply_lora(base, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    engine = VLLMRolloutEngine(model, [tok.eos_token_id], OPTS, seed=0)
    try:
        prompts = [tok(t)["input_ids"] for t in TEXTS]
        with torch.no_grad():  # an adapter that changes the model (B starts at 0)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(n)))
        with model.disable_adapter():
            base_lp = [trainer_logprobs(model, p, [7, 8, 9]) for p in prompts]
        engine.sync_weights(model)
        out = engine.generate(prompts, 10, 1.0, torch.Generator().manual_seed(1))
        for p, c in zip(prompts, out):
            torch.testing.assert_close(torch.tensor(c.logprobs), trainer_logprobs(model, p, c.token_ids),
                                       atol=1e-4, rtol=0)
        moved = max(float((trainer_logprobs(model, p, [7, 8, 9]) - b).abs().max()) for p, b in zip(prompts, base_lp))
        assert moved > 0.05, moved  # the adapter matters: vLLM follows it, not the base
    finally:
        engine.close()
