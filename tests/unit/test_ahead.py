"""sampling.ahead: the next batch is sampled during this step's update, from the weights before it."""

import copy
import threading
import time

import pytest
import torch

from mopd.models.logprobs import token_logprobs
from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.teachers.base import TeacherError
from mopd.training import loop
from mopd.training import step as step_mod
from mopd.training.ahead import RunAhead, check_can_run_ahead
from mopd.training.loop import run_onpolicy
from mopd.training.update import NonFiniteUpdate

PARAMS = {"min_len": 3, "max_len": 5, "n_train": 40, "n_eval": 5}


def config(tmp_path, name="run", ahead=1, steps=3, engine="hf", **extra):
    data = {
        "output_dir": str(tmp_path / name), "seed": 5,
        "student": {"tiny": {"seed": 1}},
        "teachers": [{"name": "t_rev", "model": {"tiny": {"seed": 11}}},
                     {"name": "t_sort", "model": {"tiny": {"seed": 12}}}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": PARAMS}, "teacher": "t_rev"},
                    {"name": "sort", "prompts": {"builtin": "sorting", "params": PARAMS}, "teacher": "t_sort"}],
        "sampling": {"prompts_per_step": 6, "rollouts_per_prompt": 2, "max_new_tokens": 6, "ahead": ahead},
        "optim": {"steps": steps, "lr": 1e-2},
        "rollout": {"engine": engine},
        "logging": {"progress": False, "jsonl": False},
        **extra,
    }
    return load_config(None, RunConfig, data=data)


class CopyingEngine(HFRolloutEngine):
    """The transformers engine on a copy of the student: like vLLM, it holds its own weights,
    which change only when the trainer pushes them. Records which weights each generate used."""

    shares_trainer_weights = False

    def __init__(self, inner: HFRolloutEngine, student):
        super().__init__(copy.deepcopy(student), inner.pad_id, inner.eos_ids)
        self.pushes, self.threads = 0, []

    def sync_weights(self, model) -> None:
        self.model.load_state_dict(model.state_dict())
        self.pushes += 1

    def generate(self, *a, **kw):
        self.threads.append(threading.current_thread().name)
        return super().generate(*a, **kw)


def build(tmp_path, name="run", ahead=1, **kw):
    # Built as an on-policy hf run (the config allows no ahead with 'hf'), then switched.
    run = build_run(config(tmp_path, name, ahead=0, **kw))
    run.engine = CopyingEngine(run.engine, run.model)
    run.sampling = run.sampling.model_copy(update={"ahead": ahead})
    return run


def prompts(run_batch):
    return [tuple(r.token_ids[:r.prompt_len]) for r in run_batch.rollouts]


def test_next_batch_is_sampled_during_the_update_from_the_weights_before_it(tmp_path, monkeypatch):
    run = build(tmp_path)
    before = copy.deepcopy(run.model)
    trained_in = []
    real_update = step_mod.update_step

    def update(*a, **kw):
        trained_in.append(threading.current_thread().name)
        return real_update(*a, **kw)

    monkeypatch.setattr(step_mod, "update_step", update)
    driver = RunAhead(run)
    m0 = driver.step(last=False)
    assert trained_in and trained_in[0].startswith("mopd-update")
    assert run.engine.threads == ["MainThread", "MainThread"]  # this step's batch, then the next one
    pre = driver.prefetched
    assert pre is not None and pre.step == 1 and "time/update_exposed" in m0
    assert run.engine.pushes == 1
    # The prefetched rollouts' sampling log-probs are those of the weights before the update.
    b = pre.sampled.batch
    with torch.no_grad():
        old = token_logprobs(before, b.input_ids, b.attention_mask, b.gen_mask).logprobs
        new = token_logprobs(run.model, b.input_ids, b.attention_mask, b.gen_mask).logprobs
    torch.testing.assert_close(b.sample_logprobs[b.gen_mask], old[b.gen_mask], atol=1e-5, rtol=1e-5)
    assert (new - old)[b.gen_mask].abs().max() > 1e-3  # the update did move the student

    run.step += 1
    m1 = driver.step(last=True)  # trains on the prefetched batch, samples nothing
    assert driver.prefetched is None and len(run.engine.threads) == 2 and "time/update_exposed" not in m1


def test_same_prompts_and_first_batch_as_the_on_policy_run(tmp_path, monkeypatch):
    ahead, onpolicy = build(tmp_path, "a"), build(tmp_path, "b", ahead=0)
    seen = {id(ahead): [], id(onpolicy): []}
    real = step_mod.sample_and_score

    def spy(run, examples, **kw):
        out = real(run, examples, **kw)
        seen[id(run)].append(out)
        return out

    monkeypatch.setattr(step_mod, "sample_and_score", spy)  # both drivers sample through the step's pieces
    for run in (ahead, onpolicy):
        run_onpolicy(run)
    a, b = seen[id(ahead)], seen[id(onpolicy)]
    assert len(a) == len(b) == 3
    assert [prompts(x) for x in a] == [prompts(x) for x in b]
    assert [r.token_ids for r in a[0].rollouts] == [r.token_ids for r in b[0].rollouts]  # same weights at step 0
    assert ahead.step == 3 and len(a) == 3  # nothing sampled past the last step


def test_checkpoint_keeps_the_prefetched_prompts_for_a_resumed_run(tmp_path):
    full = build(tmp_path, "full", steps=4)
    run_onpolicy(full, stop_at=4)
    part = build(tmp_path, "part", steps=4, checkpoint={"every": 2})
    run, driver = part, RunAhead(part)
    while run.step < 2:
        driver.step(last=False)
        run.step += 1
    assert driver.prefetched is not None and driver.prefetched.step == 2
    path = loop.save(run, driver.sampler_state())
    resumed = build(tmp_path, "part", steps=4)
    loop.resume_from(resumed, path)
    assert resumed.step == 2
    full_again = build(tmp_path, "full2", steps=4)
    for _ in range(2):
        full_again.sampler.next_batch(6)
    assert [e.prompt for e in resumed.sampler.next_batch(6)] == [e.prompt for e in full_again.sampler.next_batch(6)]


def test_a_teacher_failing_on_the_next_batch_puts_its_prompts_back(tmp_path):
    run = build(tmp_path)
    real = run.objective.router.teachers["t_sort"].score
    calls = {"n": 0}

    def flaky(batch, topk=0):
        calls["n"] += 1
        if calls["n"] == 2:  # the prefetch's call
            raise TeacherError("teacher 't_sort' is down")
        return real(batch, topk=topk)

    run.objective.router.teachers["t_sort"].score = flaky
    reference = build(tmp_path, "ref")
    reference.sampler.next_batch(6)
    expected = [e.prompt for e in reference.sampler.next_batch(6)]
    driver = RunAhead(run)
    driver.step(last=False)  # the step itself succeeds
    assert driver.prefetched is None
    assert [e.prompt for e in run.sampler.next_batch(6)] == expected  # drawn again next step


def test_a_skipped_update_keeps_the_prefetched_batch(tmp_path, monkeypatch):
    run = build(tmp_path)

    def bad(*a, **kw):
        raise NonFiniteUpdate("loss nan")

    monkeypatch.setattr(step_mod, "update_step", bad)
    driver = RunAhead(run)
    with pytest.raises(NonFiniteUpdate):
        driver.step(last=False)
    assert driver.prefetched is not None and driver.prefetched.step == 1


def test_ahead_needs_an_engine_with_its_own_weights(tmp_path):
    with pytest.raises(ValueError, match="rollout.engine 'vllm'"):
        config(tmp_path, engine="hf", ahead=1)
    run = build_run(config(tmp_path, ahead=0))
    run.sampling = run.sampling.model_copy(update={"ahead": 1})
    with pytest.raises(ValueError, match="own copy of the weights"):
        check_can_run_ahead(run)
    run.engine = CopyingEngine(run.engine, run.model)
    check_can_run_ahead(run)  # fine now
    run.dist = type("TwoRanks", (), {"world": 2})()
    with pytest.raises(ValueError, match="single training process"):
        check_can_run_ahead(run)
    run.dist = type("OneRank", (), {"world": 1})()
    run.objective.corrects_stale_samples = False  # a run built in code, without the IS correction
    with pytest.raises(ValueError, match="algorithm.is_correction"):
        check_can_run_ahead(run)


def test_the_config_refuses_ahead_by_the_same_rules(tmp_path):
    """One set of rules (mopd.config.ahead): the config names each problem before anything is built."""
    from mopd.config.load import ConfigError

    with pytest.raises(ConfigError, match="algorithm.is_correction"):
        config(tmp_path, engine="vllm", algorithm={"is_correction": None})
    with pytest.raises(ConfigError, match="mixture.mode"):
        config(tmp_path, engine="vllm", sampling={"prompts_per_step": 6, "ahead": 1, "mixture": {"mode": "tokens"}})
    with pytest.raises(ConfigError, match="'self' teacher of a LoRA student"):
        config(tmp_path, engine="vllm", student={"tiny": {"seed": 1}, "lora": {"r": 2}},
               teachers=[{"name": "t_rev", "kind": "self"}, {"name": "t_sort", "model": {"tiny": {"seed": 12}}}])
    assert config(tmp_path, engine="vllm").sampling.ahead == 1  # the same settings, vLLM, IS on: accepted


class DeferringEngine(CopyingEngine):
    """Like vLLM's engine: `defer_weights` leaves the push for `ready()` (or the next generate),
    which reads the trainer's live weights slowly."""

    def __init__(self, inner, student):
        super().__init__(inner, student)
        self.pending, self.ready_done = None, []

    def defer_weights(self, model) -> None:
        self.pending = model

    def ready(self) -> None:
        if self.pending is not None:
            time.sleep(0.3)  # a slow push: the optimiser must not change the weights meanwhile
            self.sync_weights(self.pending)
            self.pending = None
            self.ready_done.append(time.perf_counter())

    def generate(self, *a, **kw):
        self.ready()
        return super().generate(*a, **kw)


def test_the_optimiser_waits_until_the_engine_has_read_the_weights(tmp_path):
    run = build(tmp_path)
    run.engine = DeferringEngine(run.engine, run.model)
    steps_at = []
    real_step = run.optimizer.step

    def timed_step(*a, **kw):
        steps_at.append(time.perf_counter())
        return real_step(*a, **kw)

    run.optimizer.step = timed_step
    driver = RunAhead(run)
    driver.step(last=False)
    assert run.engine.pending is run.model and run.engine.pushes == 0  # left for the next update
    after0 = copy.deepcopy(run.model)
    run.step += 1
    driver.step(last=False)
    assert len(run.engine.ready_done) == 1 and steps_at[1] >= run.engine.ready_done[0]
    # The batch sampled during that update came from the weights pushed then: step 0's result.
    b = driver.prefetched.sampled.batch
    with torch.no_grad():
        lp = token_logprobs(after0, b.input_ids, b.attention_mask, b.gen_mask).logprobs
    torch.testing.assert_close(b.sample_logprobs[b.gen_mask], lp[b.gen_mask], atol=1e-5, rtol=1e-5)
