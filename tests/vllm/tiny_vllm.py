"""Shared by the vLLM tests: engine settings and the tiny model vLLM's CPU kernels accept."""

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest
import torch

from cli_runs import free_port

from mopd.config.schema import VLLMOptions
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.rollout.types import Rollout, collate

# An explicit KV cache: in-process, vLLM's automatic size is a share of RAM minus the
# memory of the whole test process, which leaves nothing once the process has grown.
OPTS = VLLMOptions(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3, kv_cache_gb=0.0625)


def vllm_tiny(seed: int):
    """A random tiny Llama that vLLM's CPU kernels accept, and its character tokenizer."""
    tok = char_tokenizer()
    return tiny_model(tok, hidden_size=64, num_heads=2, seed=seed), tok


def batch_of(rows: list[tuple[int, int]], seed: int = 0):
    """Rollouts of (prompt length, completion length) with random token ids, right-padded."""
    g = torch.Generator().manual_seed(seed)
    rollouts = []
    for i, (p, c) in enumerate(rows):
        ids = torch.randint(7, 90, (p + c,), generator=g).tolist()
        rollouts.append(Rollout.from_completion(f"d{i % 2}", ids[:p], ids[p:], [0.0] * c))
    return collate(rollouts, pad_id=0)


# (prompt, completion) lengths; the last spans a 128-token KV-cache block.
ROWS = [(3, 5), (10, 1), (1, 20), (6, 9), (140, 12)]


def distill_config(output_dir, teacher_dir, steps: int) -> dict:
    """`mopd distill` with a vLLM rollout engine and a vLLM teacher on tiny models. The IS bounds
    are +-0.1%: a token is masked as soon as the engine's log-prob differs from the trainer's, so
    `masked == 0` at a step says that the last update's weights reached the engine."""
    vllm_opts = OPTS.model_dump(exclude_none=True)
    params = {"min_len": 3, "max_len": 5, "n_train": 64, "n_eval": 8, "seed": 0}
    return {
        "output_dir": str(output_dir),
        "student": {"tiny": {"num_heads": 2}},  # built in code: vLLM gets its weights by push only
        "teachers": [{"name": "t", "kind": "vllm", "model": {"path": str(teacher_dir)}, "vllm": vllm_opts}],
        "domains": [{"name": "reversal", "prompts": {"builtin": "reversal", "params": params}, "teacher": "t"}],
        "algorithm": {"is_correction": {"eps_low": 0.999, "eps_high": 1.001}},
        "sampling": {"prompts_per_step": 8, "max_new_tokens": 8},
        "optim": {"steps": steps, "lr": 1e-2},
        "rollout": {"engine": "vllm", "vllm": vllm_opts},
        "logging": {"progress": False},
    }


@contextmanager
def vllm_server(model_dir, env_root, served: str, *extra: str):
    """A real vLLM OpenAI-compatible server on 127.0.0.1 serving `model_dir`; yields (url, process)."""
    port = free_port()
    log_path = env_root / f"server-{port}.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", served, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "256", "--gpu-memory-utilization", "0.3", "--enforce-eager",
           # An explicit KV cache: the automatic one is 30% of RAM minus what the process already uses.
           "--kv-cache-memory-bytes", str(64 * 2**20), *extra]
    # The in-process engines of other modules set this for the whole process; a server runs as vLLM's default.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready after 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
