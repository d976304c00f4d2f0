"""VLLMRolloutEngine against the trainer: same log-probs, EOS / length stops, and a weight push
after a training update that really reaches the engine."""

import copy

import pytest
import torch

from tiny_vllm import OPTS, vllm_tiny
from mopd.models.logprobs import token_logprobs
from mopd.rollout.vllm_engine import VLLMRolloutEngine

pytestmark = pytest.mark.vllm

# The long prompt fills a KV-cache block (128 tokens on a CPU), so vLLM's prefix cache can serve it again.
TEXTS = ["abc", "hello world", "x", "sort 3 1 2", "reverse: abcdef", "q",
         "the quick brown fox jumps over the lazy dog, " * 4]
MAX_NEW = 12


@pytest.fixture(scope="module")
def setup():
    model, tok = vllm_tiny(seed=3)
    # Stop tokens: EOS plus a few frequent characters, so that with this random model some
    # completions stop early and others run to the length limit.
    eos = [tok.eos_token_id] + tok.convert_tokens_to_ids(list("aeiou"))
    engine = VLLMRolloutEngine(model, eos, OPTS, seed=0)
    yield model, tok, engine, eos
    engine.close()


def trainer_logprobs(model, prompt, completion, temperature=1.0, grad=False):
    ids = torch.tensor([prompt + completion])
    gen = torch.zeros_like(ids, dtype=torch.bool)
    gen[0, len(prompt):] = True
    with torch.set_grad_enabled(grad):
        out = token_logprobs(model, ids, torch.ones_like(ids), gen, temperature=temperature)
    return out.logprobs[0, len(prompt):]


def sample(engine, tok, seed, temperature=1.0):
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    return prompts, engine.generate(prompts, MAX_NEW, temperature, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_the_trainers(setup, temperature):
    model, tok, engine, _ = setup
    prompts, completions = sample(engine, tok, seed=1, temperature=temperature)
    assert len(completions) == len(prompts)
    for p, c in zip(prompts, completions):
        assert len(c.logprobs) == len(c.token_ids) > 0
        ref = trainer_logprobs(model, p, c.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)


def test_stops_at_eos_or_at_the_length_limit(setup):
    _, tok, engine, eos = setup
    completions = [c for s in range(4) for c in sample(engine, tok, seed=s)[1]]
    finished = [c for c in completions if c.finished]
    cut = [c for c in completions if not c.finished]
    assert finished and cut  # both cases happen with these seeds
    for c in finished:  # ends with its stop token, included, and has no earlier one
        assert c.token_ids[-1] in eos and not set(c.token_ids[:-1]) & set(eos)
    for c in cut:
        assert len(c.token_ids) == MAX_NEW and not set(c.token_ids) & set(eos)


def test_reproducible_from_the_generator(setup):
    _, tok, engine, _ = setup
    a = [c.token_ids for c in sample(engine, tok, seed=5)[1]]
    b = [c.token_ids for c in sample(engine, tok, seed=5)[1]]
    c = [c.token_ids for c in sample(engine, tok, seed=6)[1]]
    assert a == b and a != c


def test_a_step_with_more_prompt_tokens_than_one_vllm_batch_samples_reproducibly(setup):
    """128 prompts of 60 tokens (7,680, past vLLM's 4,096-token batch): with chunked prefill a
    prompt would be split, and vLLM would rewind its seeded CPU generator and fail ("CPU
    Generator does not use offset"). Each prompt's sample is still the one of its seed."""
    model, tok, engine, _ = setup
    prompts = [[5 + (i + j) % 50 for j in range(60)] for i in range(128)]
    first = engine.generate(prompts, 4, 1.0, torch.Generator().manual_seed(1))
    again = engine.generate(prompts, 4, 1.0, torch.Generator().manual_seed(1))
    assert len(first) == 128 and [c.token_ids for c in first] == [c.token_ids for c in again]


def test_new_weights_reach_the_engine_after_an_update(setup):
    model, tok, engine, _ = setup
    old = copy.deepcopy(model)
    prompts, before = sample(engine, tok, seed=2)

    # One real training step (Adam: every weight moves) raising the likelihood of what was sampled.
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    loss = -sum(trainer_logprobs(model, p, c.token_ids, grad=True).sum() for p, c in zip(prompts, before))
    loss.backward()
    opt.step()
    try:
        _, stale = sample(engine, tok, seed=2)  # not pushed yet: the engine still samples the old model
        assert [c.token_ids for c in stale] == [c.token_ids for c in before]

        engine.sync_weights(model)
        _, after = sample(engine, tok, seed=2)  # same prompts: a stale prefix cache would show here
        moved = 0.0
        for p, c in zip(prompts, after):
            new_lp = torch.tensor(c.logprobs)
            torch.testing.assert_close(new_lp, trainer_logprobs(model, p, c.token_ids), atol=1e-4, rtol=0)
            moved = max(moved, float((new_lp - trainer_logprobs(old, p, c.token_ids)).abs().max()))
        assert moved > 0.1, moved  # and they are not the old model's log-probs
    finally:  # the module's other tests expect the original weights
        model.load_state_dict(old.state_dict())
        engine.sync_weights(model)
    _, back = sample(engine, tok, seed=2)
    assert [c.token_ids for c in back] == [c.token_ids for c in before]


def _engine_weights(worker) -> dict[str, torch.Tensor]:
    # Runs inside vLLM's worker: the norms, which vLLM keeps as loaded (linear layers are re-packed).
    return {k: v.detach().clone() for k, v in worker.model_runner.model.state_dict().items() if "norm" in k}


def test_a_bf16_students_master_weight_step_reaches_a_bf16_engine():
    """A bf16 student trained through float32 master weights: the push carries the rounded
    weights as they are into a bf16 engine, and sampling follows them."""
    from mopd.distributed.master_weights import MasterWeightsAdamW

    model, tok = vllm_tiny(seed=4)
    model.to(torch.bfloat16)
    engine = VLLMRolloutEngine(model, [tok.eos_token_id], OPTS.model_copy(update={'dtype': None}), seed=0)
    try:
        prompts, before = sample(engine, tok, seed=2)
        old = copy.deepcopy(model)
        opt = MasterWeightsAdamW(model.parameters(), lr=0.02)
        loss = -sum(trainer_logprobs(model, p, c.token_ids, grad=True).sum() for p, c in zip(prompts, before))
        loss.backward()
        opt.step()
        engine.sync_weights(model)
        pushed = engine.llm.collective_rpc(_engine_weights)[0]
        ours = {k: v for k, v in model.state_dict().items() if "norm" in k}
        assert pushed.keys() == ours.keys() and len(ours) > 2
        for k, v in ours.items():  # bit for bit: the weights are pushed as the trainer holds them
            assert pushed[k].dtype == torch.bfloat16 and torch.equal(pushed[k], v), k
        assert any(not torch.equal(v, old.state_dict()[k]) for k, v in ours.items())
        _, after = sample(engine, tok, seed=2)
        gap_new = gap_old = 0.0
        for p, c in zip(prompts, after):  # bf16 kernels differ in rounding; the new model is far closer
            lp = torch.tensor(c.logprobs)
            gap_new = max(gap_new, float((lp - trainer_logprobs(model, p, c.token_ids).float()).abs().max()))
            gap_old = max(gap_old, float((lp - trainer_logprobs(old, p, c.token_ids).float()).abs().max()))
        assert gap_new < 0.1 < gap_old, (gap_new, gap_old)
    finally:
        engine.close()
