"""VLLMTeacher (prompt_logprobs on the student's token ids) against the transformers teacher."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from mopd.teachers.base import TeacherError
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.vllm_teacher import VLLMTeacher
from tiny_vllm import OPTS, ROWS, batch_of

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def teachers(teacher_dir):
    vllm_teacher = VLLMTeacher("t", teacher_dir, OPTS, dtype="float32")
    yield vllm_teacher, HFTeacher("t", AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32))
    vllm_teacher.close()


def test_logprobs_equal_the_transformers_teacher(teachers):
    vllm_teacher, hf_teacher = teachers
    batch = batch_of(ROWS)
    got, ref = vllm_teacher.score(batch), hf_teacher.score(batch)
    assert got.logprobs.shape == batch.input_ids.shape and got.topk_ids is None
    torch.testing.assert_close(got.logprobs, ref.logprobs, atol=1e-4, rtol=0)
    assert (got.logprobs[~batch.gen_mask] == 0).all() and (got.logprobs[batch.gen_mask] < 0).all()


def test_topk_equals_the_transformers_teacher(teachers):
    vllm_teacher, hf_teacher = teachers
    batch = batch_of(ROWS, seed=1)
    got, ref = vllm_teacher.score(batch, topk=5), hf_teacher.score(batch, topk=5)
    assert got.topk_ids.shape == (*batch.input_ids.shape, 5)
    torch.testing.assert_close(got.logprobs, ref.logprobs, atol=1e-4, rtol=0)
    m = batch.gen_mask
    torch.testing.assert_close(got.topk_logprobs[m], ref.topk_logprobs[m], atol=1e-4, rtol=0)
    assert torch.equal(got.topk_ids[m], ref.topk_ids[m])
    assert (got.topk_logprobs[m].diff(dim=-1) <= 0).all()  # most likely first


def test_a_failed_request_is_an_error_not_zeros(teachers):
    vllm_teacher, _ = teachers
    batch = batch_of([(3, 4), (5, 5)])
    batch.input_ids[1, 6] = 10_000  # not in the vocabulary: vLLM refuses the request
    with pytest.raises(TeacherError, match="'t'"):
        vllm_teacher.score(batch)
