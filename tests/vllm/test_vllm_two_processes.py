"""`mopd distill` in two training processes (DDP over gloo, started by `accelerate launch`), each
with its own in-process vLLM rollout engine and vLLM teacher, as on a node of GPUs.

vLLM joins the launcher's processes (`external_launcher`) instead of starting its own. The
importance-sampling bounds are +-0.1%, so `masked == 0` at every step (averaged over both
ranks) says that every update's weights reached both ranks' engines before their next rollouts.
"""

import pytest
import yaml
from transformers import AutoModelForCausalLM

from cli_runs import launch_two_cpu_processes, read_metrics
from mopd.models.tiny import char_tokenizer, tiny_model
from tiny_vllm import distill_config

pytestmark = pytest.mark.vllm
STEPS = 3


def test_two_processes_each_sample_with_their_own_vllm_engine(teacher_dir, tmp_path):
    cfg = {**distill_config(tmp_path / "run", teacher_dir, STEPS), "distributed": {"device": "cpu"}}
    path = tmp_path / "mopd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = launch_two_cpu_processes(["-m", "mopd.cli", "distill", str(path)], timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # Each rank's two engines (rollouts, teacher) joined the launcher's processes: on GPUs that is
    # what puts each rank's engine on its own device (a lone engine takes the first one).
    assert (done.stdout + done.stderr).count("Using external launcher for distributed inference") == 4

    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for m in metrics:
        assert m["sequences"] == 8, m  # summed over the ranks: 4 rollouts from each engine
        assert m["masked/all"] == 0.0, m  # both engines sampled from the trainer's current weights
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    init = tiny_model(char_tokenizer(), num_heads=2, seed=0)
    moved = max(float((a - b).abs().max()) for a, b in zip(final.state_dict().values(), init.state_dict().values()))
    assert moved > 1e-3, moved  # the weights moved, so a stale engine would have shown
