"""A remote (vLLM OpenAI-compatible) teacher that fails, hangs and returns garbage, against a
stub server on 127.0.0.1: retried with backoff, then a clear TeacherError, never zeros."""

import logging
import re
from types import SimpleNamespace

import pytest
import torch
from faultkit import TeacherStub, free_port, run_data, teacher_dir
from transformers import AutoModelForCausalLM

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.models.compat import TokenizerMismatch
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.rollout.types import Rollout, collate
from mopd.teachers.base import TeacherError
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.remote import RemoteTeacher
from mopd.training.checkpoint import latest_checkpoint, load_trainer_state
from mopd.training.loop import run_onpolicy

TOK = char_tokenizer()


def batch(lengths=((3, 4), (5, 2), (2, 6))):
    """Right-padded rollouts of (prompt, completion) lengths."""
    g = torch.Generator().manual_seed(0)
    rollouts = [Rollout.from_completion("d", torch.randint(3, 60, (p,), generator=g).tolist(),
                                        torch.randint(3, 60, (c,), generator=g).tolist(), [0.0] * c)
                for p, c in lengths]
    return collate(rollouts, TOK.pad_token_id)


def client(stub, **kw):
    kw = {"timeout_s": 0.5, "max_retries": 2, "backoff_s": 0.01, **kw}
    return RemoteTeacher("math", stub.url if hasattr(stub, "url") else stub, "served-math", **kw)


def test_scores_equal_an_in_process_teacher_with_the_same_weights(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(tmp_path))
    b = batch()
    with TeacherStub(model) as stub:
        remote = client(stub, concurrency=2).score(b, topk=4)
        body = stub.requests[0]["body"]
    local = HFTeacher("math", model).score(b, topk=4)
    gen = b.gen_mask
    assert torch.allclose(remote.logprobs[gen], local.logprobs[gen], atol=1e-5)
    assert (remote.logprobs[~gen] == 0).all()  # only generated tokens are scored
    assert torch.equal(remote.topk_ids[gen], local.topk_ids[gen])
    assert torch.allclose(remote.topk_logprobs[gen], local.topk_logprobs[gen], atol=1e-5)
    assert len(stub.requests) == 3  # one request per sequence, no padding sent
    assert body["max_tokens"] == 1 and body["prompt_logprobs"] == 4 and body["model"] == "served-math"
    assert sorted(len(r["body"]["prompt"]) for r in stub.requests) == [7, 7, 8]


def test_fail_hang_garbage_in_turn_are_retried_with_backoff(caplog, monkeypatch):
    sleeps = []
    # Record the backoff instead of sleeping it (the module's own `time` only: the stub must still hang).
    monkeypatch.setattr("mopd.teachers.remote.time", SimpleNamespace(sleep=sleeps.append))
    with TeacherStub(hang_s=1.5) as stub, caplog.at_level(logging.WARNING, "mopd.teachers.remote"):
        stub.script = ["fail", "hang", "garbage"]  # then ok
        scores = client(stub, max_retries=3, backoff_s=0.1, timeout_s=0.3).score(batch([(3, 4)]))
    assert [r["behaviour"] for r in stub.requests] == ["fail", "hang", "garbage", "ok"]
    assert sleeps == [0.1, 0.2, 0.4]  # exponential backoff
    assert (scores.logprobs[batch([(3, 4)]).gen_mask] < 0).all()
    text = caplog.text
    assert "retry 1/3" in text and "retry 3/3" in text
    assert "HTTPStatusError" in text and "ReadTimeout" in text and "JSONDecodeError" in text


def test_a_teacher_that_keeps_failing_raises_naming_teacher_url_and_error():
    with TeacherStub(default="fail") as stub:
        with pytest.raises(TeacherError) as e:
            client(stub).score(batch())
        msg = str(e.value)
    assert "teacher 'math'" in msg and stub.url + "/v1/completions" in msg
    assert "after 3 attempts" in msg and "500" in msg


def test_client_errors_are_not_retried():
    with TeacherStub(default="reject") as stub:
        with pytest.raises(TeacherError, match=r"after 1 attempt: _Fatal: HTTP 401"):
            client(stub).score(batch([(3, 4)]))
        assert len(stub.requests) == 1


@pytest.mark.parametrize("behaviour, words", [
    ("no_logprobs", "no choices[0].prompt_logprobs"),
    ("short", "7 entries for 8 prompt tokens"),
    ("missing_id", "lacks the prompt's token id"),
    ("nan", "not a finite number: nan"),
    ("garbage", "JSONDecodeError"),
])
def test_invalid_answers_are_errors_not_scores(behaviour, words):
    with TeacherStub(default=behaviour) as stub:
        with pytest.raises(TeacherError, match=re.escape(words)):
            client(stub, max_retries=1).score(batch([(4, 4)]))
        assert len(stub.requests) == 2  # retried once, then failed


def test_probe_finds_a_dead_server_and_one_without_prompt_logprobs():
    with pytest.raises(TeacherError, match=r"teacher 'math'.*ConnectError.*is the server running"):
        client(f"http://127.0.0.1:{free_port()}", max_retries=0).probe()
    with TeacherStub(default="no_logprobs") as stub:
        with pytest.raises(TeacherError, match=r"prompt_logprobs.*vLLM's OpenAI-compatible server"):
            client(stub, max_retries=0).probe()
    with TeacherStub() as stub:
        client(stub).probe()  # a good server passes
        assert stub.requests[0]["body"]["prompt_logprobs"] == 0


def remote_config(tmp_path, url, out="run", **teacher):
    return load_config(None, RunConfig, data=run_data(tmp_path / out, {
        "kind": "remote", "url": url, "served_model": "t", "timeout_s": 2, "max_retries": 1,
        "backoff_s": 0.01, **teacher}))


def test_a_dead_or_mismatched_remote_teacher_fails_before_training(tmp_path):
    with pytest.raises(TeacherError, match="is the server running"):
        build_run(remote_config(tmp_path, f"http://127.0.0.1:{free_port()}"))
    assert not (tmp_path / "run").exists()  # nothing was started
    other = char_tokenizer("abcdefghij0123456789")
    save_pretrained(tiny_model(other, hidden_size=16, num_layers=1, num_heads=2), other, tmp_path / "other")
    with TeacherStub() as stub:
        with pytest.raises(TokenizerMismatch, match="teacher 't'.*vocabularies differ"):
            build_run(remote_config(tmp_path, stub.url, tokenizer=str(tmp_path / "other")))
        build_run(remote_config(tmp_path, stub.url, tokenizer=str(teacher_dir(tmp_path))))  # same: fine


def test_distillation_through_the_server_stops_on_failure_and_resumes(tmp_path):
    """Remote == in-process teacher in a real run; a teacher outage stops the run without
    applying anything, saves the state before the failed step, and --resume redoes that step."""
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(tmp_path))
    local = build_run(load_config(None, RunConfig, data=run_data(
        tmp_path / "local", {"model": {"path": str(teacher_dir(tmp_path))}})))
    run_onpolicy(local)
    with TeacherStub(model) as stub:
        run = build_run(remote_config(tmp_path, stub.url))
        run_onpolicy(run, stop_at=1)
        after_one = {k: v.clone() for k, v in run.model.state_dict().items()}
        stub.default = "fail"
        with pytest.raises(TeacherError, match="teacher 't'.*after 2 attempts"):
            run_onpolicy(run)
        assert run.step == 1
        assert all(torch.equal(after_one[k], v) for k, v in run.model.state_dict().items())  # no zeros trained
        saved = latest_checkpoint(tmp_path / "run" / "checkpoints")
        assert saved.name == "step-000001"
        assert load_trainer_state(saved)["sampler"]["drawn"] == {"rev": 3, "sort": 1}  # step 2 not consumed
        stub.default = "ok"
        resumed = build_run(remote_config(tmp_path, stub.url))
        run_onpolicy(resumed, resume=True)
    a, b = local.model.state_dict(), resumed.model.state_dict()
    assert resumed.step == 4
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
