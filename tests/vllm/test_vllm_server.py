"""RemoteTeacher against a real vLLM OpenAI-compatible server on 127.0.0.1."""

import signal

import pytest
import torch
from transformers import AutoModelForCausalLM

from mopd.teachers.base import TeacherError
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.remote import RemoteTeacher
from tiny_vllm import ROWS, batch_of, vllm_server

pytestmark = pytest.mark.vllm
SERVED = "tiny-teacher"


@pytest.fixture(scope="module")
def server(teacher_dir, vllm_env):
    with vllm_server(teacher_dir, vllm_env, SERVED) as (url, proc):
        yield url, proc


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
