"""Validation before work starts: every bad input stops `mopd distill` with an error naming
the file, the key or row, and the fix, before any model is trained.

Routing and weight rules are also unit-tested in tests/unit/test_config.py, bad rows in
tests/unit/test_data.py and tokenizer comparison in tests/unit/test_router.py; here each
mistake goes through the command line, as a user meets it.
"""

import json
import re

import pytest
import yaml
from faultkit import TINY, free_port, run_data, teacher_dir
from typer.testing import CliRunner

from mopd.cli import app
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model

runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"})


def distill(tmp_path, data: dict, *args) -> tuple[int, str]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    res = runner.invoke(app, ["distill", str(path), *args])
    return res.exit_code, re.sub(r"\s+", " ", res.output)


def base(tmp_path, **extra) -> dict:
    return run_data(tmp_path / "out", {"kind": "self"}, steps=1, **extra)


def edit(data: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = data
    for k in parents:
        node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
    node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize("key, value, words", [
    ("samplingg", {}, ["samplingg: unknown key; did you mean 'sampling'?"]),
    ("optim.lrr", 1e-3, ["optim.lrr: unknown key; did you mean 'lr'?", "keys here: lr,"]),
    ("optim.lr", "fast", ["optim.lr", "valid number"]),
    ("domains.0.teacher", "ghost", ["domain 'rev' routes to unknown teacher 'ghost'; teachers are ['t']"]),
    ("domains.0.teacher", None, ["domain 'rev' has no teacher: set domains[].teacher"]),
    ("teachers", [{"name": "t", "kind": "self"}, {"name": "idle", "kind": "self"}],
     ["teachers ['idle'] are used by no domain: remove them or route a domain to them"]),
    ("domains.1.weight", -1, ["domains.1.weight", "mixture weight must be >= 0, got -1"]),
    ("domains.0.weight", 0, []),  # one zero weight is fine; see below for all zero
    ("teachers.0", {"name": "t", "kind": "remote", "url": "127.0.0.1:8000", "served_model": "m"},
     ["needs 'url' starting with http://"]),
])
def test_config_mistakes_name_the_file_and_the_key(tmp_path, key, value, words):
    code, out = distill(tmp_path, edit(base(tmp_path), key, value))
    if not words:
        assert code == 0, out
        return
    assert code == 2 and "invalid config" in out and str(tmp_path / "run.yaml") in out, out
    assert all(w in out for w in words), out
    assert not (tmp_path / "out").exists()  # nothing started


def test_mixture_weights_summing_to_zero(tmp_path):
    data = edit(edit(base(tmp_path), "domains.0.weight", 0), "domains.1.weight", 0)
    code, out = distill(tmp_path, data)
    assert code == 2 and "weights sum to zero: give at least one domain a weight > 0" in out


def with_file(tmp_path, name: str, content: bytes | str, shared: bool = False) -> dict:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    data = base(tmp_path)
    data["domains"][0]["prompts"] = {"path": str(path)}
    if shared:
        data["domains"][1]["prompts"] = {"path": str(path)}
    return data


@pytest.mark.parametrize("name, content, shared, words", [
    ("empty.jsonl", "\n\n", False, "empty.jsonl is empty"),
    ("binary.jsonl", b"\xff\xfe\x00\x81garbage", False, "cannot read prompt file"),
    ("broken.parquet", "PAR1 not really", False, "cannot read parquet file"),
    ("bad.jsonl", '{"prompt": "ab"}\n{"prompt": "cd"\n', False, "bad.jsonl, line 2: not valid JSON"),
    ("noprompt.jsonl", '{"prompt": "ab"}\n{"answer": "x"}\n', False,
     "noprompt.jsonl, row 1: row has neither 'prompt' nor 'messages'"),
    ("numlabel.jsonl", '{"prompt": "ab", "domain": 3}\n', False, "row 0: 'domain' must be a string"),
    ("shared.jsonl", '{"prompt": "ab", "domain": "rev"}\n{"prompt": "cd"}\n', True,
     "shared.jsonl, row 1: no 'domain', but the file is shared by domains ['rev', 'sort']"),
    ("otherdomain.jsonl", '{"prompt": "ab", "domain": "math"}\n', False,
     "no rows for domain 'rev'; domains in the file: ['math']"),
])
def test_bad_datasets_name_the_file_and_row(tmp_path, name, content, shared, words):
    code, out = distill(tmp_path, with_file(tmp_path, name, content, shared))
    assert code == 1 and words in out, out
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_missing_dataset(tmp_path):
    data = base(tmp_path)
    data["domains"][0]["prompts"] = {"path": str(tmp_path / "nowhere.jsonl")}
    code, out = distill(tmp_path, data)
    assert code == 1 and "nowhere.jsonl does not exist" in out


def test_prompts_longer_than_the_limit_or_the_context(tmp_path):
    data = with_file(tmp_path, "long.jsonl", json.dumps({"prompt": "x" * 40}) + "\n")
    code, out = distill(tmp_path, data, "--set", "sampling.max_prompt_tokens=30")
    assert code == 1 and "domain 'rev', prompt 0: 40 tokens, longer than sampling.max_prompt_tokens=30" in out
    code, out = distill(tmp_path, data, "--set", "sampling.max_new_tokens=240")
    assert code == 1 and "40 prompt tokens + sampling.max_new_tokens=240 exceed the student's context of 256" in out


def teacher_with(tmp_path, tok, name: str) -> dict:
    save_pretrained(tiny_model(tok, **TINY), tok, tmp_path / name)
    return {"model": {"path": str(tmp_path / name)}}


def test_teachers_whose_vocabulary_or_special_tokens_differ(tmp_path):
    code, out = distill(tmp_path, run_data(tmp_path / "out", teacher_with(
        tmp_path, char_tokenizer("abcdefghij0123456789"), "fewer")))
    assert code == 1 and "teacher 't' cannot score the student's token ids: vocabularies differ" in out
    other_eos = char_tokenizer()
    other_eos.eos_token = "<|end|>"
    code, out = distill(tmp_path, run_data(tmp_path / "out", teacher_with(tmp_path, other_eos, "eos")))
    assert code == 1 and "special tokens differ: eos_token_id 2 vs 6" in out
    code, out = distill(tmp_path, run_data(tmp_path / "out", {"model": {"path": str(teacher_dir(tmp_path))}}),
                        "--set", "optim.steps=1")
    assert code == 0, out  # the same tokenizer passes


def test_a_remote_teacher_that_does_not_answer(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    data = run_data(tmp_path / "out", {"kind": "remote", "url": url, "served_model": "m", "max_retries": 0})
    code, out = distill(tmp_path, data)
    assert code == 1 and f"teacher 't' at {url}/v1/completions failed" in out and "is the server running" in out
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, ["check", str(tmp_path / "run.yaml")])
    assert res.exit_code == 1 and "is the server running" in res.output  # `mopd check` probes it too


def test_grpo_on_a_domain_without_a_verifier(tmp_path):
    # Prompts from a file have no verifier unless one is named: GRPO would see reward 0 everywhere.
    data = with_file(tmp_path, "rev.jsonl", json.dumps({"prompt": "abc"}) + "\n")
    data.update(objective="grpo", teachers=[])
    for d in data["domains"]:
        d.pop("teacher")
    code, out = distill(tmp_path, data)
    assert code == 1 and "domains ['rev'] have none: give each a built-in prompt set or domains[].verifier" in out
    data["domains"][0]["verifier"] = "reversal"
    code, out = distill(tmp_path, data)
    assert code == 0, out
