"""The overlapped step (sampling.overlap_chunks) on real vLLM: a vLLM rollout engine sampling in
chunks while a vLLM teacher and a transformers teacher score finished chunks on the worker
thread; the next batch sampled during the update (sampling.ahead); and the head-size check that stops a model vLLM's CPU attention cannot run, early."""

import copy
import math

import pytest
import torch

from mopd.models.logprobs import token_logprobs
from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.rollout.vllm_engine import VLLMRolloutEngine
from mopd.teachers.vllm_teacher import VLLMTeacher
from mopd.training.ahead import RunAhead
from mopd.training.step import train_one_step
from mopd.training.overlap import sample_and_score
from tiny_vllm import OPTS

pytestmark = pytest.mark.vllm


def test_head_dim_error_comes_before_vllm_starts(tmp_path):
    tok = char_tokenizer()
    model = tiny_model(tok, num_heads=4)  # 4 heads of 16 dims
    with pytest.raises(ValueError, match=r"the student \(rollout.engine: vllm\).*head_dim 16"):
        VLLMRolloutEngine(model, tok.eos_token_id, OPTS)
    save_pretrained(model, tok, tmp_path / "t")
    with pytest.raises(ValueError, match=r"teacher 'math' .*head_dim 16.*num_heads 2"):
        VLLMTeacher("math", str(tmp_path / "t"), OPTS)


def test_chunked_vllm_step_overlapped_equals_serial(teacher_dir, tmp_path):
    vllm_opts = OPTS.model_dump(exclude_none=True)
    params = {"min_len": 3, "max_len": 5, "n_train": 32, "n_eval": 4, "seed": 0}
    cfg = load_config(None, RunConfig, data={
        "output_dir": str(tmp_path / "run"),
        "student": {"tiny": {"num_heads": 2}},
        "teachers": [{"name": "v", "kind": "vllm", "model": {"path": str(teacher_dir)}, "vllm": vllm_opts},
                     {"name": "h", "model": {"tiny": {"num_heads": 2, "seed": 12}}}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": params}, "teacher": "v"},
                    {"name": "sort", "prompts": {"builtin": "sorting", "params": params}, "teacher": "h"}],
        "sampling": {"prompts_per_step": 9, "max_new_tokens": 6, "overlap_chunks": 3},
        "optim": {"steps": 1, "lr": 1e-3},
        "rollout": {"engine": "vllm", "vllm": vllm_opts},
        "logging": {"progress": False},
    })
    run = build_run(cfg)
    try:
        examples = run.sampler.next_batch(9)
        serial = sample_and_score(run, examples, overlap=False)
        over = sample_and_score(run, examples, overlap=True)
        assert [r.token_ids for r in serial.rollouts] == [r.token_ids for r in over.rollouts]
        assert [r.sample_logprobs for r in serial.rollouts] == [r.sample_logprobs for r in over.rollouts]
        assert {r.domain for r in over.rollouts} == {"rev", "sort"}
        for k in serial.signals:
            assert torch.equal(serial.signals[k], over.signals[k]), k
        assert serial.signals["lp_teacher"][serial.batch.gen_mask].abs().min() > 0

        m = train_one_step(run)  # the loop's own overlapped step, then the push into the engine
        assert math.isfinite(m["loss"]) and m["completion_tokens"] > 0
        assert m["time/teacher"] > 0 and m["time/teacher_hidden"] >= 0
    finally:
        run.engine.close()
        run.objective.router.teachers["v"].close()


def test_vllm_engine_samples_the_next_batch_during_the_update(tmp_path):
    """sampling.ahead on real vLLM: the update runs on a worker thread while vLLM samples the next
    batch on the main thread, from the weights before the update (checked against the trainer)."""
    vllm_opts = OPTS.model_dump(exclude_none=True)
    params = {"min_len": 3, "max_len": 5, "n_train": 32, "n_eval": 4, "seed": 0}
    cfg = load_config(None, RunConfig, data={
        "output_dir": str(tmp_path / "run"),
        "student": {"tiny": {"num_heads": 2}},
        "teachers": [{"name": "h", "model": {"tiny": {"num_heads": 2, "seed": 12}}}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": params}, "teacher": "h"}],
        "sampling": {"prompts_per_step": 6, "max_new_tokens": 6, "ahead": 1},
        "optim": {"steps": 2, "lr": 1e-2},
        "rollout": {"engine": "vllm", "vllm": vllm_opts},
        "logging": {"progress": False},
    })
    run = build_run(cfg)

    def sampled_with(batch, model):
        """How far the batch's sampling log-probs are from `model`'s, at most."""
        m = batch.gen_mask
        with torch.no_grad():
            lp = token_logprobs(model, batch.input_ids, batch.attention_mask, m).logprobs[m]
        return float((batch.sample_logprobs[m] - lp).abs().max())

    try:
        before = copy.deepcopy(run.model)
        driver = RunAhead(run)
        m0 = driver.step(last=False)
        assert math.isfinite(m0["loss"]) and m0["time/update_exposed"] >= 0
        b1 = driver.prefetched.sampled.batch
        assert sampled_with(b1, before) < 1e-3 < sampled_with(b1, run.model)
        assert run.engine.stale  # the new weights wait for the next update's forward and backward
        after0 = copy.deepcopy(run.model)
        run.step += 1
        m1 = driver.step(last=False)  # pushes them while it updates
        assert m1["completion_tokens"] == int(b1.gen_mask.sum())
        b2 = driver.prefetched.sampled.batch
        assert sampled_with(b2, after0) < 1e-3 < sampled_with(b2, run.model)
        run.step += 1
        m2 = driver.step(last=True)  # the last step: trains on the prefetched batch, pushes at once
        assert math.isfinite(m2["loss"]) and driver.prefetched is None and not run.engine.stale
    finally:
        run.engine.close()
