"""Teacher mixtures: a domain scored by several teachers, its advantage the weighted sum of each
teacher's clipped advantage (the pull toward their weighted geometric mixture)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mopd.models.logprobs import TokenLogprobs
from mopd.config.schema import AlgorithmConfig, RunConfig
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.objectives.base import Totals
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.types import Rollout, collate
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.router import TeacherRouter
from mopd.training.update import update_step

TOK = char_tokenizer()


def model(seed: int):
    return tiny_model(TOK, hidden_size=32, num_layers=1, num_heads=2, seed=seed)


def batch():
    g = torch.Generator().manual_seed(0)
    rs = [Rollout.from_completion(d, TOK(p)["input_ids"], torch.randint(7, 40, (n,), generator=g).tolist(), [-1.0] * n)
          for d, p, n in (("math", "a:1+2=", 5), ("rev", "rev:abc=", 4), ("math", "a:7+1=", 3))]
    return collate(rs, TOK.pad_token_id)


class Counting(HFTeacher):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[int] = []

    def score(self, batch, topk=0):
        self.calls.append(batch.size)
        return super().score(batch, topk)


def loss_and_grad(objective: MOPDObjective, b, student_seed: int = 9):
    """One objective's loss and gradient on `b`, through the student's real forward."""
    student = model(student_seed)
    signals = objective.score([], b)
    lp = student(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.log_softmax(-1)
    lp_pi = torch.zeros(b.input_ids.shape)
    lp_pi[:, 1:] = lp[:, :-1].gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    lp_pi = lp_pi * b.gen_mask
    target = None
    if objective.topk:
        target = torch.zeros(signals["topk_ids"].shape)
        target[:, 1:] = lp[:, :-1].gather(-1, signals["topk_ids"][:, 1:])
    out = objective.loss(TokenLogprobs(lp_pi, target_logprobs=target), b, signals,
                         Totals(b.size, int(b.gen_mask.sum())))
    grads = torch.autograd.grad(out.loss, list(student.parameters()))
    return out, grads


@pytest.mark.parametrize("loss", ["sampled", "topk"])
def test_two_identical_teachers_at_half_each_are_the_single_teacher(loss):
    algo = AlgorithmConfig(loss=loss, topk=4, is_correction=None)
    t = model(1)
    single = MOPDObjective(TeacherRouter({"t": HFTeacher("t", t)}, {"math": "t", "rev": "t"}), algo)
    twins = {"a": HFTeacher("a", t), "b": HFTeacher("b", t)}
    mixed = MOPDObjective(TeacherRouter(twins, {"math": [("a", 0.5), ("b", 0.5)], "rev": "a"}), algo)
    b = batch()
    (ref, ref_g), (got, got_g) = loss_and_grad(single, b), loss_and_grad(mixed, b)
    assert torch.equal(got.loss, ref.loss)
    assert all(torch.equal(x, y) for x, y in zip(got_g, ref_g))


def test_weights_one_and_zero_are_the_one_teacher():
    algo = AlgorithmConfig(is_correction=None)
    teachers = {"a": HFTeacher("a", model(1)), "b": HFTeacher("b", model(2))}
    single = MOPDObjective(TeacherRouter(teachers, {"math": "a", "rev": "a"}), algo)
    mixed = MOPDObjective(TeacherRouter(teachers, {"math": [("a", 1.0), ("b", 0.0)], "rev": "a"}), algo)
    b = batch()
    (ref, ref_g), (got, got_g) = loss_and_grad(single, b), loss_and_grad(mixed, b)
    assert torch.equal(got.loss, ref.loss) and all(torch.equal(x, y) for x, y in zip(got_g, ref_g))
    # ... and the other teacher is not the same, so the weights did decide.
    other = MOPDObjective(TeacherRouter(teachers, {"math": "b", "rev": "a"}), algo)
    assert not torch.allclose(loss_and_grad(other, b)[0].loss, ref.loss)


class NoStep:
    def zero_grad(self, set_to_none=True): ...
    def step(self): ...
    def get_last_lr(self): return [0.0]


@pytest.mark.parametrize("w", [0.25, 0.6])
def test_a_self_anchor_scales_the_pull_toward_the_other_teacher(w):
    student, b = model(9), batch()
    anchor = HFTeacher.frozen_copy_of("anchor", student)  # the student itself: advantage 0
    other = Counting("specialist", model(3))
    algo = AlgorithmConfig(is_correction=None, a_max=50.0)
    alone = MOPDObjective(TeacherRouter({"specialist": other}, {"math": "specialist", "rev": "specialist"}), algo)
    mixed = MOPDObjective(TeacherRouter({"specialist": other, "anchor": anchor},
                                        {"math": [("specialist", 1 - w), ("anchor", w)], "rev": "specialist"}), algo)
    nostep = NoStep()
    _, ref = update_step(student, nostep, nostep, b, alone.score([], b), alone, 1, None)
    other.calls.clear()
    _, got = update_step(student, nostep, nostep, b, mixed.score([], b), mixed, 1, None)
    assert other.calls == [3]  # once per batch, with all of its rows (both domains)
    math = (b.domain_ids == b.domains.index("math"))[:, None] & b.gen_mask
    torch.testing.assert_close(got["advantage"][math], (1 - w) * ref["advantage"][math], atol=1e-6, rtol=1e-5)
    rev = (b.domain_ids == b.domains.index("rev"))[:, None] & b.gen_mask
    torch.testing.assert_close(got["advantage"][rev], ref["advantage"][rev])
    # Reverse KL to each teacher, on the rows of the domains that use it.
    assert torch.isnan(got["reverse_kl_to/anchor"][rev]).all()
    assert float(got["reverse_kl_to/anchor"][math].abs().max()) < 1e-6
    torch.testing.assert_close(got["reverse_kl_to/specialist"][b.gen_mask], ref["reverse_kl"][b.gen_mask])


def config(**domain) -> dict:
    return {"student": {"tiny": {}},
            "teachers": [{"name": "spec", "kind": "self"}, {"name": "gen", "kind": "self"}],
            "domains": [{"name": "math", "prompts": {"builtin": "addition"}, **domain}]}


def test_config_errors_name_the_key():
    ok = RunConfig(**config(teacher=[{"name": "spec", "weight": 0.7}, {"name": "gen", "weight": 0.3}]))
    assert ok.domains[0].route == [("spec", 0.7), ("gen", 0.3)]
    with pytest.raises(ValidationError, match=r"domains\.0\.teacher"):
        RunConfig(**config(teacher=[{"name": "spec", "weight": 0.0}, {"name": "gen", "weight": 1.0}]))
    with pytest.raises(ValidationError, match=r"domains\.0\.teacher"):
        RunConfig(**config(teacher=[{"name": "spec", "weight": -1}, {"name": "gen", "weight": 1}]))
    with pytest.raises(ValidationError, match=r"unknown teacher 'ghost'; teachers are \['spec', 'gen'\] \(domains\[\]\.teacher\)"):
        RunConfig(**config(teacher=[{"name": "ghost", "weight": 1}, {"name": "gen", "weight": 1}]))
    with pytest.raises(ValidationError, match=r"teachers \['gen'\] are used by no domain"):
        RunConfig(**config(teacher=[{"name": "spec", "weight": 1}]))
    with pytest.raises(ValidationError, match="names a teacher twice"):
        RunConfig(**config(teacher=[{"name": "spec", "weight": 1}, {"name": "spec", "weight": 1}, {"name": "gen", "weight": 1}]))


def test_distill_with_a_mixture_end_to_end(tmp_path):
    from cli_runs import distill_cli
    from mopd.models.loading import save_pretrained

    save_pretrained(model(3), TOK, tmp_path / "specialist")
    params = {"n_train": 24, "n_eval": 4}
    rows = distill_cli(tmp_path, {
        "output_dir": str(tmp_path / "out"),
        "student": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "seed": 9}},
        "teachers": [{"name": "specialist", "model": {"path": str(tmp_path / "specialist")}},
                     {"name": "anchor", "kind": "self"}],
        "domains": [{"name": "add", "prompts": {"builtin": "addition", "params": params},
                     "teacher": [{"name": "specialist", "weight": 0.7}, {"name": "anchor", "weight": 0.3}]},
                    {"name": "rev", "prompts": {"builtin": "reversal", "params": params}, "teacher": "specialist"}],
        "sampling": {"prompts_per_step": 4, "max_new_tokens": 4},
        "optim": {"steps": 2, "lr": 1e-3},
        "teacher_pool": {"max_resident": 1},
        "logging": {"progress": False},
    })
    last = rows[-1]
    assert {"reverse_kl_to/anchor/add", "reverse_kl_to/specialist/add", "reverse_kl_to/specialist/rev"} <= set(last)
    assert "reverse_kl_to/anchor/rev" not in last  # rev does not use the anchor
    assert (tmp_path / "out" / "final" / "config.json").is_file()


def test_weights_are_normalised_to_sum_one():
    algo = AlgorithmConfig(is_correction=None)
    teachers = {"a": HFTeacher("a", model(1)), "b": HFTeacher("b", model(2))}
    scaled = MOPDObjective(TeacherRouter(teachers, {"math": [("a", 3.0), ("b", 1.0)], "rev": "a"}), algo)
    unit = MOPDObjective(TeacherRouter(teachers, {"math": [("a", 0.75), ("b", 0.25)], "rev": "a"}), algo)
    assert scaled.router.route("math") == [("a", 0.75), ("b", 0.25)]
    b = batch()
    (ref, ref_g), (got, got_g) = loss_and_grad(unit, b), loss_and_grad(scaled, b)
    assert torch.equal(got.loss, ref.loss) and all(torch.equal(x, y) for x, y in zip(got_g, ref_g))
