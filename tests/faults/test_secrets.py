"""User code and secrets: API keys come from the environment and reach only the request
header; remote code is trusted only when the config says so."""

import logging

import pytest
from faultkit import TeacherStub, run_data, teacher_dir
from transformers import AutoModelForCausalLM

from mopd.build import build_run
from mopd.config.load import ConfigError, load_config
from mopd.config.schema import ModelSpec, RunConfig
from mopd.models import loading
from mopd.teachers.base import TeacherError
from mopd.teachers.remote import RemoteTeacher
from mopd.training.loop import run_onpolicy

KEY = "sk-test-7f3a9c1e5b"


def remote(url: str) -> dict:
    return {"kind": "remote", "url": url, "served_model": "t", "api_key_env": "MOPD_FAULT_KEY",
            "max_retries": 1, "backoff_s": 0.01}


def test_api_key_is_sent_as_bearer_and_never_logged_printed_or_saved(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("MOPD_FAULT_KEY", KEY)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(tmp_path))
    cfg = load_config(None, RunConfig, data=run_data(tmp_path / "run", remote("http://127.0.0.1:1"), steps=3,
                                                     logging={"progress": False, "tensorboard": True}))
    with TeacherStub(model) as stub, caplog.at_level(logging.DEBUG):
        cfg.teachers[0].url = stub.url
        run = build_run(cfg)
        run_onpolicy(run, stop_at=2)
        assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in stub.requests)
        teacher = run.objective.router.teachers["t"]
        assert KEY not in repr(teacher) and KEY not in repr(run.run_config)
        assert run.run_config["teachers"][0]["api_key_env"] == "MOPD_FAULT_KEY"  # what W&B and logs get
        stub.default = "reject"  # a server that echoes the request headers in its error body
        with pytest.raises(TeacherError) as e:
            run_onpolicy(run)
    assert "401" in str(e.value) and "***" in str(e.value) and KEY not in str(e.value)
    assert KEY not in caplog.text and "MOPD_FAULT_KEY" not in caplog.text
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "trainer_state.pt" for p in files) and any("tfevents" in p.name for p in files)
    assert not [p for p in files if KEY.encode() in p.read_bytes()]  # checkpoints, metrics, TensorBoard


def test_missing_key_variable_and_a_pasted_key_are_config_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MOPD_FAULT_KEY", raising=False)
    cfg = load_config(None, RunConfig, data=run_data(tmp_path / "run", remote("http://127.0.0.1:1")))
    with pytest.raises(ValueError, match="environment variable MOPD_FAULT_KEY .* is not set"):
        RemoteTeacher.from_config(cfg.teachers[0])
    pasted = remote("http://127.0.0.1:1") | {"api_key_env": KEY}
    with pytest.raises(ConfigError) as e:
        load_config(None, RunConfig, data=run_data(tmp_path / "run", pasted))
    assert "teachers.0" in str(e.value) and "NAME of an environment variable" in str(e.value)
    assert KEY not in str(e.value)


def test_trust_remote_code_is_off_unless_the_config_turns_it_on(tmp_path, monkeypatch):
    seen = []

    def record(kind):
        def fake(source, **kw):
            seen.append((kind, source, kw.get("trust_remote_code")))
            raise RuntimeError("stop here")  # only the arguments matter
        return fake

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", record("tokenizer"))
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", record("model"))
    for spec in (ModelSpec(path="some/model"), ModelSpec(path="some/model", trust_remote_code=True)):
        for load in (loading.load_tokenizer, loading.load_model):
            with pytest.raises(RuntimeError, match="stop here"):
                load(spec)
    assert seen == [("tokenizer", "some/model", False), ("model", "some/model", False),
                    ("tokenizer", "some/model", True), ("model", "some/model", True)]
    # The same default reaches a teacher's model from a whole config.
    cfg = load_config(None, RunConfig, data=run_data(tmp_path, {"model": {"path": "some/model"}}))
    assert cfg.teachers[0].model.trust_remote_code is False
    seen.clear()
    with pytest.raises(RuntimeError, match="stop here"):
        build_run(cfg)
    assert seen == [("tokenizer", "some/model", False)]
