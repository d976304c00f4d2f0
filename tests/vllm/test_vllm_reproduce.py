"""`mopd reproduce` with the vLLM rollout engine: every on-policy stage is built by the builder
of `mopd distill`, so one `--set rollout.engine=vllm` reaches them all."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

STAGES = {"teacher_reversal": "grpo", "teacher_sorting": "grpo", "mopd": "mopd", "mix_rl": "grpo",
          "cascade_rl/reversal": "grpo", "cascade_rl/sorting": "grpo"}


def test_reproduce_micro_samples_every_stage_with_vllm(tmp_path):
    out = tmp_path / "micro"
    cmd = [sys.executable, "-m", "mopd.cli", "--verbose", "reproduce", "--preset", "micro", "--set", "rollout.engine=vllm",
           "--output-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for stage, objective in STAGES.items():
        run_cfg = json.loads((out / stage / "run_config.json").read_text())
        assert run_cfg["rollout"]["engine"] == "vllm", stage
        assert run_cfg.get("objective", "mopd") == objective, stage
        assert (out / stage / "metrics.jsonl").is_file(), stage
    mopd_cfg = json.loads((out / "mopd" / "run_config.json").read_text())
    assert sorted(d["teacher"] for d in mopd_cfg["domains"]) == ["teacher_reversal", "teacher_sorting"]
    # The vLLM engine took the trainer's weights after each update of every stage: at least one
    # reload per on-policy step (teachers 2 + 2, MOPD 4, Mix-RL and Cascade RL 2 each).
    assert done.stderr.count("pushed the trainer's weights into the vLLM engine") >= 12
    report = json.loads((out / "report.json").read_text())
    assert {r["method"] for r in report["rows"]} >= {"MOPD", "Mix-RL", "Cascade RL", "Off-Policy FT"}
