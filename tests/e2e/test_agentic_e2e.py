"""MOPD over a single-turn domain (reversal) and an agentic one (lookup: call a tool, answer
with what it returned), on tiny models: the student's success rate on lookup episodes moves
toward its teacher's.

The init knows the format a little (brief SFT on demonstrations of both domains); the
lookup teacher had more SFT on lookup demonstrations. Both are trained here: SFT on an
agentic domain plays its demonstrations through the episode driver.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli_runs import distill_cli
from mopd.config.schema import LoggingConfig, OptimConfig
from mopd.domains.registry import build_domain
from mopd.eval.evaluate import evaluate_domain
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.training.sft import SFTSettings, run_sft

pytestmark = pytest.mark.slow

LOOKUP = {"n_train": 400, "n_eval": 100, "seed": 0}
REVERSAL = {"min_len": 3, "max_len": 4, "n_train": 400, "n_eval": 100, "seed": 0}


def _sft(model, tok, examples, steps):
    run_sft(model, tok, examples, OptimConfig(lr=3e-3, steps=steps, schedule="constant"),
            SFTSettings(batch_size=64), logging=LoggingConfig(progress=False))


def success(path):
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    dom = build_domain("lookup", "lookup", LOOKUP)
    return evaluate_domain(model, tok, "lookup", dom.eval_examples(), dom.reward, samples=2,
                           max_new_tokens=16).pass_at_1


@pytest.fixture(scope="module")
def agentic_models(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("agentic_models")
    tok = char_tokenizer()
    lookup = build_domain("lookup", "lookup", LOOKUP).train_examples()
    reversal = build_domain("reversal", "reversal", REVERSAL).train_examples()
    init = tiny_model(tok, seed=7)
    _sft(init, tok, lookup + reversal, 150)
    save_pretrained(init, tok, root / "init")
    teacher = copy.deepcopy(init)
    _sft(teacher, tok, lookup, 200)
    save_pretrained(teacher, tok, root / "lookup")
    return {"init": root / "init", "lookup": root / "lookup"}


def test_mopd_over_single_turn_and_agentic_domains_lifts_episode_success(agentic_models, tmp_path):
    cfg = {
        "output_dir": str(tmp_path / "run"), "seed": 0,
        "student": {"path": str(agentic_models["init"])},
        "teachers": [{"name": "rev_teacher", "kind": "self"},
                     {"name": "lookup_teacher", "model": {"path": str(agentic_models["lookup"])}}],
        "domains": [{"name": "reversal", "prompts": {"builtin": "reversal", "params": REVERSAL},
                     "teacher": "rev_teacher"},
                    {"name": "lookup", "prompts": {"builtin": "lookup", "params": LOOKUP},
                     "teacher": "lookup_teacher"}],
        "sampling": {"prompts_per_step": 32, "max_new_tokens": 16},
        "algorithm": {"loss": "topk", "topk": 32},  # the full-distribution form: low variance
        "optim": {"steps": 60, "lr": 1e-3, "warmup_steps": 5},
        "logging": {"progress": False},
    }
    metrics = distill_cli(tmp_path, cfg)
    assert len(metrics) == 60
    before, teacher = success(agentic_models["init"]), success(agentic_models["lookup"])
    after = success(tmp_path / "run" / "final")
    print(json.dumps({"init": before, "teacher": teacher, "student": after}))
    assert teacher > before + 0.3, (before, teacher)  # the setup is meaningful
    assert after > before + 0.1, (before, after, teacher)  # measured: 0.265 -> 0.435, teacher 0.985
    first = sum(m["reverse_kl/lookup"] for m in metrics[:10]) / 10
    last = sum(m["reverse_kl/lookup"] for m in metrics[-10:]) / 10
    assert last < first, (first, last)
    # Episodes had several turns, and the teacher scored them all: per-domain episode metrics.
    assert metrics[-1]["turns/lookup"] > 1.5 and "turns/reversal" not in metrics[-1]
