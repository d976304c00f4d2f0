import json
import re

import yaml
from typer.testing import CliRunner

from mopd.cli import app
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}
SMALL = {"n_train": 20, "n_eval": 5}


def config(tmp_path, **extra) -> str:
    data = {
        "output_dir": str(tmp_path / "out"),
        "student": {"tiny": TINY},
        "teachers": [{"name": "me", "kind": "self"}],
        "domains": [
            {"name": "rev", "teacher": "me", "prompts": {"builtin": "reversal", "params": SMALL}},
            {"name": "add", "teacher": "me", "prompts": {"builtin": "addition", "params": SMALL}},
        ],
        "sampling": {"prompts_per_step": 4, "max_new_tokens": 4},
        **extra,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_help():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "distill" in res.output and "check" in res.output
    for cmd, opts in (("distill", ("--set", "--resume", "newest complete checkpoint")), ("check", ("--set",))):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0, res.output
        out = plain(res.output)
        assert all(o in out for o in opts) and "Override a config key" in out and "YAML config file" in out


def test_check_passes_on_self_teacher(tmp_path):
    res = runner.invoke(app, ["check", config(tmp_path)])
    out = plain(res.output)
    assert res.exit_code == 0, out
    assert "check passed" in out
    kl = re.search(r"reverse KL ([-0-9.e+]+)", out)
    assert kl and abs(float(kl.group(1))) < 1e-4


def test_unknown_key_exits_2_and_names_it(tmp_path):
    res = runner.invoke(app, ["check", config(tmp_path, samplingg={"max_new_tokens": 4})])
    assert res.exit_code == 2
    assert "samplingg" in plain(res.output)
    res = runner.invoke(app, ["check", config(tmp_path), "--set", "optim.lrr=1"])
    assert res.exit_code == 2 and "optim.lrr" in plain(res.output)


def test_check_fails_on_teacher_with_another_tokenizer(tmp_path):
    other = char_tokenizer("abcdefghij0123456789")
    save_pretrained(tiny_model(other, **TINY), other, tmp_path / "outsider_model")
    cfg = config(tmp_path, teachers=[{"name": "me", "kind": "self"},
                                     {"name": "outsider", "kind": "hf",
                                      "model": {"path": str(tmp_path / "outsider_model")}}])
    data = yaml.safe_load(open(cfg))
    data["domains"][1]["teacher"] = "outsider"
    open(cfg, "w").write(yaml.safe_dump(data))
    res = runner.invoke(app, ["check", cfg])
    out = plain(res.output)
    assert res.exit_code != 0, out
    assert "outsider" in out and "vocabularies differ" in out and "check passed" not in out


def test_distill_writes_model_and_metrics(tmp_path):
    res = runner.invoke(app, ["distill", config(tmp_path), "--set", "optim.steps=2",
                              "--set", "logging.progress=false"])
    assert res.exit_code == 0, plain(res.output) + repr(res.exception)
    out = tmp_path / "out"
    final = out / "final"
    assert json.loads((final / "config.json").read_text())["model_type"] == "llama"
    assert (final / "model.safetensors").stat().st_size > 0
    assert (final / "tokenizer.json").is_file() and (final / "tokenizer_config.json").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        for key in ("reverse_kl/all", "time/rollout", "time/teacher", "time/update", "tokens_per_s",
                    "reverse_kl/rev", "reverse_kl/add", "entropy/rev", "entropy/add"):
            assert isinstance(m.get(key), float), key
        assert m["tokens_per_s"] > 0


def test_interrupted_reproduce_keeps_finished_stages_and_prints_how_to_continue(tmp_path, monkeypatch):
    import signal

    from mopd.pipeline import methods
    from mopd.training.interrupt import TrainingInterrupted

    def interrupted_teacher(cfg, doms, domain, start, out):
        raise TrainingInterrupted(signal.SIGINT, 1, out / "checkpoints" / "step-000001")

    monkeypatch.setattr(methods, "domain_teacher", interrupted_teacher)
    out = tmp_path / "repro"
    res = runner.invoke(app, ["reproduce", "--preset", "micro", "--set", "seed=4", "--output-dir", str(out)])
    text = plain(res.output)
    assert res.exit_code == 130, text
    assert "interrupted" in text and f"finished stages are kept in {out}" in text
    assert f"continue with: mopd reproduce --preset micro --set seed=4 --output-dir {out}" in text
    assert (out / "sft" / "result.json").is_file()  # the SFT init finished before the interruption
    assert not (out / "report.md").exists()


def test_eval_scores_a_distilled_model_with_the_distill_config(tmp_path):
    # A user who ran `mopd distill CONFIG` scores the result with the same CONFIG.
    cfg = config(tmp_path, optim={"steps": 1}, logging={"progress": False})
    res = runner.invoke(app, ["distill", cfg])
    assert res.exit_code == 0, plain(res.output)
    res = runner.invoke(app, ["eval", str(tmp_path / "out" / "final"), cfg])
    out = plain(res.output)
    assert res.exit_code == 0, out
    assert "unknown key" not in out
    assert re.search(r"rev\s.*\d\.\d{3}", out) and re.search(r"add\s.*\d\.\d{3}", out)
