"""Teacher scoring overlapped with generation (sampling.overlap_chunks): the same numbers as the
serial step, scoring on a worker thread, and a time split that shows the hidden teacher time."""

import threading
import time

import pytest
import torch

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.rollout.types import TokenBatch, collate
from mopd.teachers.base import Teacher, TeacherError, TeacherScores
from mopd.rollout.engine import RolloutEngine
from mopd.training import step as step_mod
from mopd.training.overlap import chunk_bounds, chunk_generator, sample_and_score, step_generator
from mopd.training.step import train_one_step
from mopd.rollout.sample import collect_rollouts

PARAMS = {"min_len": 3, "max_len": 5, "n_train": 40, "n_eval": 5}


def config(tmp_path, chunks=3, **algorithm):
    return load_config(None, RunConfig, data={
        "output_dir": str(tmp_path / "run"), "seed": 5,
        "student": {"tiny": {"seed": 1}},
        "teachers": [{"name": "t_rev", "model": {"tiny": {"seed": 11}}},
                     {"name": "t_sort", "model": {"tiny": {"seed": 12}}}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": PARAMS}, "teacher": "t_rev"},
                    {"name": "sort", "prompts": {"builtin": "sorting", "params": PARAMS}, "teacher": "t_sort"}],
        "algorithm": algorithm,
        "sampling": {"prompts_per_step": 10, "rollouts_per_prompt": 2, "max_new_tokens": 6,
                     "overlap_chunks": chunks},
        "optim": {"steps": 2, "lr": 1e-3, "grad_accum_steps": 2},
        "logging": {"progress": False},
    })


def spy_step(run, monkeypatch, overlap):
    """train_one_step with the overlapped (None: as configured) or serial path; what it sampled,
    the threads its teachers scored on, and its metrics."""
    seen, threads = [], []
    for t in run.objective.router.teachers.values():
        real = t.score

        def score(batch, topk=0, _real=real):
            threads.append(threading.current_thread().name)
            return _real(batch, topk=topk)

        t.score = score

    def spy(r, examples, **kw):
        seen.append(sample_and_score(r, examples, overlap=overlap, **kw))
        return seen[-1]

    monkeypatch.setattr(step_mod, "sample_and_score", spy)
    metrics = train_one_step(run)
    return seen[0], threads, metrics


@pytest.mark.parametrize("algorithm", [{"alpha": 0.5}, {"loss": "topk", "topk": 4}])
def test_overlapped_step_equals_serial_step(tmp_path, monkeypatch, algorithm):
    serial_run, overlap_run = (build_run(config(tmp_path, **algorithm)) for _ in range(2))
    serial, serial_threads, m_serial = spy_step(serial_run, monkeypatch, overlap=False)
    over, over_threads, m_over = spy_step(overlap_run, monkeypatch, overlap=None)

    # Both scored each of the 3 chunks, one call per teacher in it: the serial step after
    # generation on the main thread, the overlapped one on the worker thread.
    calls = sum(len({r.domain for r in over.rollouts[2 * a:2 * b]}) for a, b in chunk_bounds(10, 3))
    assert serial_threads == ["MainThread"] * calls and calls >= 3
    assert len(over_threads) == calls and all(n.startswith("mopd-score") for n in over_threads)
    assert [(r.domain, r.token_ids, r.sample_logprobs, r.group, r.reward) for r in serial.rollouts] == \
        [(r.domain, r.token_ids, r.sample_logprobs, r.group, r.reward) for r in over.rollouts]
    assert [r.group for r in over.rollouts] == [i // 2 for i in range(20)]  # groups numbered across chunks
    for f in ("input_ids", "attention_mask", "gen_mask", "sample_logprobs", "domain_ids", "groups"):
        assert torch.equal(getattr(serial.batch, f), getattr(over.batch, f)), f
    assert serial.signals.keys() == over.signals.keys()
    for k in serial.signals:
        assert torch.equal(serial.signals[k], over.signals[k]), k
    assert serial.signals["lp_teacher"][serial.batch.gen_mask].abs().min() > 0  # real teacher numbers
    assert m_serial["loss"] == m_over["loss"] and m_serial["grad_norm"] == m_over["grad_norm"]
    a, b = serial_run.model.state_dict(), overlap_run.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert m_serial["time/teacher_hidden"] == 0.0 and m_serial["time/teacher_exposed"] == m_serial["time/teacher"]
    for k in ("time/teacher", "time/teacher_exposed", "time/teacher_hidden", "time/teacher_hidden_frac"):
        assert k in m_over and m_over[k] >= 0, k
    assert m_over["time/teacher_hidden"] == pytest.approx(m_over["time/teacher"] - m_over["time/teacher_exposed"])


def test_chunk_signals_stack_into_the_whole_batch_signals(tmp_path):
    """Scored chunk by chunk and stacked = scored as one batch: exactly with a teacher whose
    numbers depend on the row alone, to float rounding with real teachers (whose last bits
    depend on the padded width of the batch a row came in)."""
    run = build_run(config(tmp_path, alpha=0.5))
    chunked = sample_and_score(run, run.sampler.next_batch(10), overlap=True)
    whole = run.objective.score(chunked.rollouts, chunked.batch)
    assert whole.keys() == chunked.signals.keys() == {"lp_teacher", "orm_advantage"}
    for k in whole:
        torch.testing.assert_close(chunked.signals[k], whole[k], atol=1e-5, rtol=0)

    class RowTeacher(Teacher):  # log-prob of a token: a function of its id and position only
        name = "row"

        def score(self, batch, topk=0):
            pos = torch.arange(batch.input_ids.shape[1])
            return TeacherScores(-(batch.input_ids % 7 + pos).float() * batch.gen_mask)

    run.objective.router.teachers = {"t_rev": RowTeacher(), "t_sort": RowTeacher()}
    chunked = sample_and_score(run, run.sampler.next_batch(10), overlap=True)
    whole = run.objective.score(chunked.rollouts, chunked.batch)
    assert all(torch.equal(chunked.signals[k], whole[k]) for k in whole)
    assert chunked.batch.input_ids.shape[1] > min(len(r.token_ids) for r in chunked.rollouts)  # padding was needed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_overlapped_equals_serial_with_teachers_on_a_gpu(tmp_path):
    """The worker scores on its own CUDA stream: still the serial step's numbers."""
    runs = [build_run(config(tmp_path, loss="topk", topk=4)) for _ in range(2)]
    for r in runs:
        for t in r.objective.router.teachers.values():
            t.model.cuda()
    examples = runs[0].sampler.next_batch(10)
    serial = sample_and_score(runs[0], examples, overlap=False)
    over = sample_and_score(runs[1], examples, overlap=True)
    assert [r.token_ids for r in serial.rollouts] == [r.token_ids for r in over.rollouts]
    for k in serial.signals:
        assert torch.equal(serial.signals[k], over.signals[k]), k


def test_one_chunk_is_the_serial_step_of_before(tmp_path):
    """overlap_chunks 1: the step's generator of (seed, step), the whole batch scored at once."""
    run, ref = build_run(config(tmp_path, chunks=1)), build_run(config(tmp_path, chunks=1))
    examples = run.sampler.next_batch(10)
    got = sample_and_score(run, examples)
    rollouts = collect_rollouts(ref.engine, ref.tokenizer, examples, ref.sampling, ref.verifiers,
                                step_generator(ref.seed, ref.step))
    batch = collate(rollouts, ref.tokenizer.pad_token_id, sorted(ref.sampler.shares))
    signals = ref.objective.score(rollouts, batch)
    assert [r.token_ids for r in got.rollouts] == [r.token_ids for r in rollouts]
    assert all(torch.equal(got.signals[k], signals[k]) for k in signals)


def test_chunks_and_their_generators():
    assert chunk_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert chunk_bounds(2, 4) == [(0, 1), (1, 2)]  # never an empty chunk
    assert chunk_bounds(0, 2) == []
    draw = lambda g: torch.randint(0, 2**30, (4,), generator=g).tolist()  # noqa: E731
    assert draw(chunk_generator(5, 3, 0, 1)) == draw(step_generator(5, 3))
    seen = {tuple(draw(chunk_generator(5, s, c, 3))) for s in range(3) for c in range(3)}
    assert len(seen) == 9  # every (step, chunk) draws differently
    assert draw(chunk_generator(5, 1, 2, 3)) == draw(chunk_generator(5, 1, 2, 3))


def test_whole_batch_objectives_score_once_after_generation(tmp_path):
    run = build_run(config(tmp_path))
    calls = []

    class WholeBatch:
        topk, rowwise = 0, False

        def score(self, rollouts, batch):
            calls.append((len(rollouts), threading.current_thread().name))
            return {}

    run.objective = WholeBatch()
    out = sample_and_score(run, run.sampler.next_batch(10))
    assert calls == [(20, "MainThread")] and len(out.rollouts) == 20


class SlowTeacher(Teacher):
    """A Teacher that takes `delay` seconds per call (sleeping, as a remote call would)."""

    def __init__(self, name, delay, fail=False):
        self.name, self.delay, self.fail = name, delay, fail

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        time.sleep(self.delay)
        if self.fail:
            raise TeacherError(f"teacher {self.name!r} is down")
        return TeacherScores(torch.full(batch.input_ids.shape, -1.0))


class SlowEngine(RolloutEngine):
    """The run's engine, `delay` seconds slower per generate call."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def generate(self, *args, **kw):
        time.sleep(self.delay)
        return self.inner.generate(*args, **kw)

    def sync_weights(self, model):
        self.inner.sync_weights(model)


def test_teacher_time_is_hidden_behind_generation(tmp_path):
    # 3 chunks, 0.3 s of generation and 0.2 s of teacher per chunk: chunks 0 and 1 are scored
    # while chunks 1 and 2 generate, only chunk 2's scoring is left after generation.
    run = build_run(config(tmp_path))
    run.engine = SlowEngine(run.engine, 0.3)
    slow = SlowTeacher("slow", 0.2)
    run.objective.router.teachers = {"t_rev": slow, "t_sort": slow}
    run.objective.router.domain_to_teacher = {"rev": "t_rev", "sort": "t_rev"}  # one call per chunk
    m = train_one_step(run)
    assert m["time/rollout"] >= 0.9
    assert m["time/teacher"] >= 0.6
    assert m["time/teacher_hidden"] >= 0.3, m
    assert m["time/teacher_exposed"] <= m["time/teacher"] - 0.3
    assert 0.4 < m["time/teacher_hidden_frac"] <= 1.0

    serial = build_run(config(tmp_path, chunks=1))
    serial.objective.router.teachers = {"t_rev": slow, "t_sort": slow}
    m1 = train_one_step(serial)
    assert m1["time/teacher"] >= 0.4 and m1["time/teacher_hidden"] == 0.0  # two calls, nothing to hide behind


def test_a_failing_teacher_stops_the_overlapped_step(tmp_path):
    run = build_run(config(tmp_path))
    run.objective.router.teachers["t_sort"] = SlowTeacher("t_sort", 0.0, fail=True)
    with pytest.raises(TeacherError, match="'t_sort' is down"):
        train_one_step(run)

