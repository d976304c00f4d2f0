"""teacher_pool.max_resident: never more local teachers loaded than asked, loads in the order the
batch needs them, and the same scores as with every teacher resident."""

import weakref

import pytest
import torch

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.rollout.types import Rollout, collate
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.pool import PooledTeacher, TeacherPool
from mopd.teachers.router import TeacherRouter
from mopd.training.step import train_one_step

TOK = char_tokenizer()
NAMES = ["a", "b", "c"]
ROUTES = {f"d_{n}": n for n in NAMES}


def hf_teachers(device="cpu"):
    return {n: HFTeacher(n, tiny_model(TOK, hidden_size=32, num_layers=1, num_heads=2, seed=i).to(device))
            for i, n in enumerate(NAMES)}


def batch_of(domain_order: list[str], seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in domain_order:
        p, c = (int(x) for x in torch.randint(2, 9, (2,), generator=g))
        ids = torch.randint(7, len(TOK), (p + c,), generator=g).tolist()
        rows.append(Rollout.from_completion(f"d_{d}", ids[:p], ids[p:], [0.0] * c))
    return collate(rows, TOK.pad_token_id, sorted(ROUTES))


def loaded_on_device(member: PooledTeacher) -> bool:
    """Really on its compute device (a CPU teacher: in memory at all), not by the pool's own books."""
    model = member.teacher.model
    return model is not None and next(model.parameters()).device == member.device


def pooled(max_resident, device="cpu"):
    """A pool of the three teachers, built as build_teachers does, with every (re)load instrumented."""
    pool = TeacherPool(max_resident)
    peak = [0]
    loaded = lambda: sum(loaded_on_device(m) for m in pool.members)  # noqa: E731
    real_reload = PooledTeacher.reload

    def reload(member):
        real_reload(member)
        peak[0] = max(peak[0], loaded())

    teachers = {}
    for name, t in hf_teachers(device).items():
        pool.make_room()
        teachers[name] = pool.add(t)
        peak[0] = max(peak[0], loaded())
    return pool, teachers, peak, reload


def record_loads(monkeypatch) -> list[str]:
    """The names of the teachers the pool (re)loads from now on, in order."""
    loads, real_reload = [], PooledTeacher.reload

    def reload(member):
        real_reload(member)
        loads.append(member.name)

    monkeypatch.setattr(PooledTeacher, "reload", reload)
    return loads


BATCHES = [["a", "b", "c", "a"], ["c", "c", "b"], ["b", "a", "c", "b", "a"], ["a"]]


@pytest.mark.parametrize("max_resident", [1, 2])
def test_pool_bounds_memory_and_scores_like_all_resident(max_resident, monkeypatch):
    pool, teachers, peak, reload = pooled(max_resident)
    monkeypatch.setattr(PooledTeacher, "reload", reload)
    loads = record_loads(monkeypatch)
    reference = TeacherRouter(hf_teachers(), ROUTES)
    router = TeacherRouter(teachers, ROUTES)
    for i, order in enumerate(BATCHES):
        batch = batch_of(order, seed=i)
        got, ref = router.score(batch, topk=3), reference.score(batch, topk=3)
        assert torch.equal(got.logprobs, ref.logprobs) and torch.equal(got.topk_ids, ref.topk_ids)
        assert torch.equal(got.topk_logprobs, ref.topk_logprobs)
        assert len(pool.resident) <= max_resident
    assert peak[0] == max_resident  # never more, and the bound was used
    assert len(loads) > 0  # teachers really went out and came back


def test_pool_loads_in_batch_order_each_missing_teacher_once(monkeypatch):
    loads = record_loads(monkeypatch)
    pool, teachers, _, _ = pooled(1)
    assert pool.resident == ["c"]  # the last one built
    router = TeacherRouter(teachers, ROUTES)
    router.score(batch_of(["c", "a", "b", "a"]))
    assert loads == ["a", "b"]  # c was loaded: it goes first; then the batch's order
    router.score(batch_of(["a", "c", "b"]))
    assert loads == ["a", "b", "a", "c"]  # b (loaded) first, then a and c as the batch needs them

    pool2, teachers2, _, _ = pooled(2)
    assert pool2.resident == ["b", "c"]
    loads.clear()
    TeacherRouter(teachers2, ROUTES).score(batch_of(["a", "b", "c"]))
    assert loads == ["a"] and sorted(pool2.resident) == ["a", "c"]  # b was the least recently used


def test_cpu_teachers_go_to_disk_and_their_memory_is_freed(monkeypatch):
    loads = record_loads(monkeypatch)
    pool = TeacherPool(1)
    ta, tb, _ = hf_teachers().values()
    a = pool.add(ta)
    gone = weakref.ref(ta.model)
    b = pool.add(tb)
    assert gone() is None  # `a` was offloaded when `b` came, and nothing kept its weights alive
    assert a.teacher.model is None and (a.snapshot / "model.safetensors").is_file()
    snapshot = a.snapshot
    a.score(batch_of(["a"]))
    assert a.resident and not b.resident and b.teacher.model is None
    a.score(batch_of(["a"]))
    b.score(batch_of(["b"]))
    a.score(batch_of(["a"]))
    assert a.snapshot == snapshot and loads == ["a", "b", "a"]  # one snapshot per teacher, reused


def test_other_teachers_are_not_pooled():
    class Remote:
        name = "remote"

    pool = TeacherPool(1)
    remote = Remote()
    assert pool.add(remote) is remote and pool.members == []
    plain = HFTeacher("x", tiny_model(TOK, hidden_size=32, num_layers=1, num_heads=2))
    assert TeacherPool(None).add(plain) is plain  # no limit: nothing pooled
    with pytest.raises(ValueError, match="max_resident must be >= 1"):
        TeacherPool(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_teachers_wait_in_cpu_memory(monkeypatch):
    pool, teachers, peak, reload = pooled(1, device="cuda")
    monkeypatch.setattr(PooledTeacher, "reload", reload)
    loads = record_loads(monkeypatch)
    reference = TeacherRouter(hf_teachers("cuda"), ROUTES)
    router = TeacherRouter(teachers, ROUTES)
    for i, order in enumerate(BATCHES):
        batch = batch_of(order, seed=i)
        got, ref = router.score(batch, topk=3), reference.score(batch, topk=3)
        assert torch.equal(got.logprobs, ref.logprobs) and torch.equal(got.topk_logprobs, ref.topk_logprobs)
        on_gpu = [m.name for m in pool.members if next(m.teacher.model.parameters()).is_cuda]
        assert on_gpu == pool.resident and len(on_gpu) == 1
    assert len(loads) > 0


def test_distill_step_with_a_pool_matches_one_without(tmp_path):
    def run(max_resident):
        small = {"n_train": 20, "n_eval": 4}
        params = {"min_len": 3, "max_len": 5, **small}
        cfg = load_config(None, RunConfig, data={
            "output_dir": str(tmp_path / f"run{max_resident}"), "student": {"tiny": {"seed": 1}},
            "teachers": [{"name": "t_rev", "model": {"tiny": {"seed": 11}}},
                         {"name": "t_sort", "model": {"tiny": {"seed": 12}}}, {"name": "me", "kind": "self"}],
            "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": params}, "teacher": "t_rev"},
                        {"name": "sort", "prompts": {"builtin": "sorting", "params": params}, "teacher": "t_sort"},
                        {"name": "add", "prompts": {"builtin": "addition", "params": small}, "teacher": "me"}],
            "sampling": {"prompts_per_step": 9, "max_new_tokens": 5},
            "teacher_pool": {"max_resident": max_resident}, "logging": {"progress": False}})
        r = build_run(cfg)
        return r, train_one_step(r)

    pooled_run, m_pooled = run(1)
    plain_run, m_plain = run(None)
    members = list(pooled_run.objective.router.teachers.values())
    assert all(isinstance(t, PooledTeacher) for t in members)
    assert sum(loaded_on_device(t) for t in members) == 1
    assert not any(isinstance(t, PooledTeacher) for t in plain_run.objective.router.teachers.values())
    assert m_pooled["loss"] == m_plain["loss"]
    a, b = pooled_run.model.state_dict(), plain_run.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
