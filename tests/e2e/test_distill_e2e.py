"""MOPD end to end on tiny models: two teachers, each good at one toy domain, and a student
that is good at neither; after a short `mopd distill` the student is closer to each teacher
(reverse KL down) and better on each domain (held-out accuracy up)."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli_runs import distill_cli
from conftest import TOY_PARAMS
from mopd.domains.registry import build_domain
from mopd.eval.evaluate import evaluate_domain

pytestmark = pytest.mark.slow


def accuracy(path, domain):
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    dom = build_domain(domain, domain, TOY_PARAMS[domain])
    return evaluate_domain(model, tok, domain, dom.eval_examples(), dom.reward, samples=4, max_new_tokens=8).pass_at_1


def test_two_teacher_distillation_lifts_both_domains(toy_models, tmp_path):
    distill_and_check_both_domains_lift(toy_models, tmp_path, {"model": {"path": str(toy_models["sorting"])}})


def distill_and_check_both_domains_lift(toy_models, tmp_path, sort_teacher: dict) -> None:
    """300 MOPD steps with the reversal teacher and `sort_teacher` (a teacher config without its
    name) must cut each domain's reverse KL by half and lift its held-out accuracy by 0.1. Each
    teacher's accuracy is taken from `toy_models`: a sorting teacher other than the toy one must
    score as that one does (the cross-tokenizer test's is the same model under other token ids)."""
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "student": {"path": str(toy_models["init"])},
        "teachers": [{"name": "rev_teacher", "model": {"path": str(toy_models["reversal"])}},
                     {"name": "sort_teacher", **sort_teacher}],
        "domains": [{"name": d, "prompts": {"builtin": d, "params": TOY_PARAMS[d]}, "teacher": t}
                    for d, t in (("reversal", "rev_teacher"), ("sorting", "sort_teacher"))],
        "sampling": {"prompts_per_step": 32, "max_new_tokens": 8},
        "optim": {"steps": 300, "lr": 3e-4, "warmup_steps": 5},
        "logging": {"progress": False},
    }
    metrics = distill_cli(tmp_path, cfg)
    assert len(metrics) == 300
    for d in ("reversal", "sorting"):
        first = sum(m[f"reverse_kl/{d}"] for m in metrics[:20]) / 20
        last = sum(m[f"reverse_kl/{d}"] for m in metrics[-20:]) / 20
        assert last < 0.5 * first, (d, first, last)

        before = accuracy(toy_models["init"], d)
        after = accuracy(tmp_path / "run" / "final", d)
        teacher = accuracy(toy_models[d], d)
        assert teacher > before + 0.2, (d, before, teacher)  # the setup is meaningful
        assert after > before + 0.1, (d, before, after, teacher)
