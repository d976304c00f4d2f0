"""The report reads well: one colour per method in every panel, tables not squeezed in logs."""

from __future__ import annotations

import json

import matplotlib.figure
from matplotlib.colors import to_hex
from typer.testing import CliRunner

from mopd.cli import app
from mopd.eval import report

DOMAINS = ("reversal", "sorting")


def result(name: str, a: float, b: float, curve: bool = False) -> dict:
    scores = {"reversal": {"greedy": a, "pass_at_1": a}, "sorting": {"greedy": b, "pass_at_1": b}}
    pts = [[100, scores], [200, scores]] if curve else []
    return {"name": name, "model_dir": "x", "sequences": 200, "seconds": 5.0, "scores": scores, "curve": pts}


def summary() -> dict:
    return {"sft": result("SFT init", 0.2, 0.5),
            "teachers": {"reversal": result("teacher reversal", 0.8, 0.5), "sorting": result("teacher sorting", 0.2, 0.9)},
            "methods": [result("MOPD", 0.7, 0.8, curve=True), result("Mix-RL", 0.6, 0.85, curve=True),
                        result("Off-Policy FT", 0.75, 0.7), result("Param-Merge (average)", 0.4, 0.6),
                        result("Param-Merge (task arithmetic)", 0.5, 0.65)]}


def test_each_method_keeps_one_colour_in_every_panel(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    report.write_report(tmp_path, summary())
    ax1, ax2 = figures[0].axes
    left = {line.get_label(): to_hex(line.get_color()) for line in ax1.lines if not line.get_label().startswith("_")}
    left.update({c.get_label(): to_hex(c.get_facecolor()[0]) for c in ax1.collections})
    methods = [m["name"] for m in summary()["methods"]]
    assert sorted(left) == sorted(methods)
    assert len(set(left.values())) == len(methods)  # no two methods share a colour
    bars = [p for p in ax2.patches if p.get_width() > 0]
    assert len(bars) == len(methods) * len(DOMAINS)
    for i, bar in enumerate(bars):  # domain by domain, methods in table order
        assert to_hex(bar.get_facecolor()) == left[methods[i % len(methods)]]


def test_report_table_is_not_squeezed_when_written_to_a_log(tmp_path):
    report.write_report(tmp_path, summary())
    res = CliRunner().invoke(app, ["report", str(tmp_path)])  # not a terminal: as in a log
    assert res.exit_code == 0, res.output
    assert "Param-Merge (task arithmetic)" in res.output and "…" not in res.output
    assert json.loads((tmp_path / "report.json").read_text())["rows"][0]["method"] == "MOPD"
