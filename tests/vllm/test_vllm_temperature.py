"""vLLM teachers score at the sampling temperature: a teacher that is the student gives advantage 0.

vLLM's prompt log-probs ignore temperature. The in-process teacher scales its logits processor
by 1/T; a server is started with `--hf-overrides '{"logit_scale": 1/T}'` and declares
`server_temperature: T`. Both are compared with the student's own training log-probs at T.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from mopd.models.logprobs import token_logprobs
from mopd.algorithms.mopd_loss import mopd_advantages
from mopd.config.schema import TeacherConfig
from mopd.teachers.remote import RemoteTeacher
from mopd.teachers.vllm_teacher import VLLMTeacher, scale_logits_in_worker
from tiny_vllm import OPTS, ROWS, batch_of, vllm_server

pytestmark = pytest.mark.vllm
TOL = 1e-4  # vLLM's float32 kernels against transformers': rounding, as in the other teacher tests


def student_logprobs(model_dir, batch, temperature):
    """The student's side: the training forward's log-probs at the temperature (the model is the teacher)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return token_logprobs(model, batch.input_ids, batch.attention_mask, batch.gen_mask,
                          temperature=temperature).logprobs.detach()


def assert_zero_advantage(teacher_lp, student_lp, batch):
    m = batch.gen_mask
    adv = mopd_advantages(teacher_lp, student_lp, a_max=5.0)
    assert float(adv[m].abs().max()) < TOL


def test_in_process_teacher_scores_at_the_temperature(teacher_dir):
    batch = batch_of(ROWS, seed=3)
    teacher = VLLMTeacher("t", teacher_dir, OPTS, dtype="float32", temperature=0.7)
    try:
        assert_zero_advantage(teacher.score(batch).logprobs, student_logprobs(teacher_dir, batch, 0.7), batch)
        far = (teacher.score(batch).logprobs - student_logprobs(teacher_dir, batch, 1.0))[batch.gen_mask]
        assert float(far.abs().max()) > 0.05
        # The same engine moved from 1/0.7 to 1/1.3: the scale is what sets the temperature.
        teacher.llm.collective_rpc(scale_logits_in_worker, args=(0.7 / 1.3,))
        assert_zero_advantage(teacher.score(batch).logprobs, student_logprobs(teacher_dir, batch, 1.3), batch)
    finally:
        teacher.close()


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_remote_teacher_scores_at_the_temperature(teacher_dir, vllm_env, temperature):
    scale = f'{{"logit_scale": {1 / temperature!r}}}'
    with vllm_server(teacher_dir, vllm_env, "hot", "--hf-overrides", scale) as (url, _):
        cfg = TeacherConfig(name="r", kind="remote", url=url, served_model="hot", server_temperature=temperature)
        remote = RemoteTeacher.from_config(cfg, temperature=temperature)
        batch = batch_of(ROWS, seed=4)
        assert_zero_advantage(remote.score(batch).logprobs, student_logprobs(teacher_dir, batch, temperature), batch)
        remote.close()
