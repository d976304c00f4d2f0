"""`mopd reproduce` on the micro preset: every stage runs, the report has every row and column,
and a rerun reads the cached stages instead of training again."""

import json

from typer.testing import CliRunner

from mopd.cli import app

METHODS = ["MOPD", "Mix-RL", "Cascade RL", "Off-Policy FT", "Param-Merge (task arithmetic x1)",
           "Param-Merge (average)"]


def test_micro_pipeline_runs_every_stage_and_reports(tmp_path):
    out = tmp_path / "micro"
    runner = CliRunner()
    result = runner.invoke(app, ["reproduce", "--preset", "micro", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    for stage in ("sft", "teacher_reversal", "teacher_sorting", "mopd", "mix_rl", "cascade_rl", "offpolicy",
                  "merge_avg", "merge_task"):
        assert (out / stage / "result.json").is_file(), stage
        assert (out / stage / "model" / "model.safetensors").is_file(), stage
    report = json.loads((out / "report.json").read_text())
    assert sorted(r["method"] for r in report["rows"]) == sorted(METHODS)
    for row in report["rows"]:
        assert set(row["raw"]) == {"reversal", "sorting"}
        assert set(row["normalised"]) == {"reversal", "sorting"}
        for key in ("mean", "spread", "sequences", "seconds"):
            assert key in row
    # Methods that sample get MOPD's budget of sequences; merges sample nothing.
    seqs = {r["method"]: r["sequences"] for r in report["rows"]}
    assert seqs["MOPD"] == 4 * 8
    assert seqs["Mix-RL"] == seqs["MOPD"] and seqs["Off-Policy FT"] == seqs["MOPD"]
    assert seqs["Param-Merge (average)"] == 0
    assert len(report["curves"].get("MOPD", [])) in (0, 2)
    md = (out / "report.md").read_text()
    for m in METHODS:
        assert m in md
    assert (out / "report.png").stat().st_size > 10_000

    before = (out / "mopd" / "result.json").stat().st_mtime_ns
    again = runner.invoke(app, ["reproduce", "--preset", "micro", "--output-dir", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "mopd" / "result.json").stat().st_mtime_ns == before  # cached, not retrained

    rebuilt = runner.invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0 and "MOPD" in rebuilt.output


def test_lora_and_self_anchor_variants_train_beside_plain_mopd(tmp_path):
    """`--set variants=...` adds a LoRA student and a self-anchored MOPD to the table; the LoRA
    stage hands on a plain model directory (adapter merged) that moved away from the init."""
    from safetensors.torch import load_file

    out = tmp_path / "micro"
    variants = ("variants=[{name: lora, lora: {r: 4, lora_alpha: 8, target_modules: all-linear}, lr: 0.01},"
                " {name: anchor, self_anchor: 0.25}]")
    result = CliRunner().invoke(app, ["reproduce", "--preset", "micro", "--set", "baselines=[]", "--set", variants,
                                      "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert set(rows) == {"MOPD", "MOPD (lora)", "MOPD (anchor)"}
    assert rows["MOPD (lora)"]["sequences"] == rows["MOPD (anchor)"]["sequences"] == rows["MOPD"]["sequences"]
    lora_dir = out / "mopd_lora" / "model"
    assert not (lora_dir / "adapter_config.json").exists()
    init, lora = load_file(out / "sft" / "model" / "model.safetensors"), load_file(lora_dir / "model.safetensors")
    assert init.keys() == lora.keys()
    moved = [k for k in init if not (init[k] == lora[k]).all()]
    assert moved and all("proj" in k for k in moved)  # LoRA on the linear layers only: norms and embeddings kept
    metrics = [json.loads(line) for line in (out / "mopd_anchor" / "metrics.jsonl").read_text().splitlines()]
    assert all("reverse_kl_to/init/reversal" in m and "reverse_kl_to/teacher_reversal/reversal" in m for m in metrics)
