"""RemoteTeacher against a real vLLM OpenAI-compatible server on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from mopd.teachers.base import TeacherError
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.remote import RemoteTeacher
from tiny_vllm import ROWS, batch_of

pytestmark = pytest.mark.vllm
SERVED = "tiny-teacher"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(teacher_dir, vllm_env):
    port = free_port()
    log_path = vllm_env / f"server-{port}.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(teacher_dir),
           "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "256", "--gpu-memory-utilization", "0.3", "--enforce-eager",
           # An explicit KV cache: the automatic one is 30% of RAM minus what the process already uses.
           "--kv-cache-memory-bytes", str(64 * 2**20)]
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


def test_probe_checks_the_endpoint(server):
    url, _ = server
    RemoteTeacher("t", url, SERVED).probe([5, 6, 7, 8])  # really returns prompt log-probs
    with pytest.raises(TeacherError, match="not-served"):
        RemoteTeacher("t", url, "not-served", max_retries=0).probe([5, 6, 7, 8])


def test_scores_equal_the_transformers_teacher(server, teacher_dir):
    url, _ = server
    remote = RemoteTeacher("t", url, SERVED, timeout_s=60)
    hf = HFTeacher("t", AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32))
    batch = batch_of(ROWS, seed=2)
    got, ref = remote.score(batch, topk=5), hf.score(batch, topk=5)
    m = batch.gen_mask
    torch.testing.assert_close(got.logprobs, ref.logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.topk_logprobs[m], ref.topk_logprobs[m], atol=1e-4, rtol=0)
    assert torch.equal(got.topk_ids[m], ref.topk_ids[m])
    remote.close()


def test_server_ends_on_sigterm(server):
    _, proc = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) is not None
