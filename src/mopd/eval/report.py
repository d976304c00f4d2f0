"""The paper's table with our numbers: raw and normalised per-domain scores, mean, spread,
sequences sampled and wall time; as Markdown, JSON and PNG plots.

Normalised score per domain: (s - s_sft) / (s_teacher - s_sft), so the SFT init is 0 and
that domain's teacher is 1 (docs/method.md, "The paper's numbers"). Scores are pass@1 at temperature 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mopd.eval.scores import METRIC, normalised
from mopd.eval.seeds import merge_seeds



def build_table(results: list[dict], sft: dict, teachers: dict[str, dict]) -> list[dict]:
    """One row per method: raw scores, normalised scores, mean, spread, sequences, seconds."""
    domains = list(teachers)
    rows = []
    for r in results:
        raw = {d: r["scores"][d][METRIC] for d in domains}
        norm = {d: normalised(raw[d], sft["scores"][d][METRIC], teachers[d]["scores"][d][METRIC]) for d in domains}
        finite = [v for v in norm.values() if math.isfinite(v)]
        rows.append({
            "method": r["name"], "raw": raw, "normalised": norm,
            "mean": sum(finite) / len(finite) if finite else float("nan"),
            "spread": (max(finite) - min(finite)) if finite else float("nan"),
            "sequences": r["sequences"], "seconds": r["seconds"],
        })
    return rows


def _f(x: float, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def markdown(rows: list[dict], domains: list[str]) -> str:
    head = (["method"] + [f"{d} (raw)" for d in domains] + [f"{d} (norm.)" for d in domains]
            + ["mean", "spread", "sequences", "wall s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max((r["mean"] for r in rows if math.isfinite(r["mean"])), default=None)
    for r in rows:
        mean = _f(r["mean"])
        if best is not None and math.isfinite(r["mean"]) and r["mean"] == best:
            mean = f"**{mean}**"
        cells = ([r["method"]] + [_f(r["raw"][d]) for d in domains] + [_f(r["normalised"][d]) for d in domains]
                 + [mean, _f(r["spread"]), str(r["sequences"]), f"{r['seconds']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(results: list[dict], sft: dict, teachers: dict[str, dict]) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for r in results:
        pts = []
        for seqs, scores in r.get("curve", []):
            norm = [normalised(scores[d][METRIC], sft["scores"][d][METRIC], teachers[d]["scores"][d][METRIC])
                    for d in teachers]
            finite = [v for v in norm if math.isfinite(v)]
            if finite:
                pts.append((seqs, sum(finite) / len(finite)))
        if pts:
            out[r["name"]] = pts
    return out


HATCHES = ("", "///", "...", "xxx", "\\\\\\")


def method_colours(names: list[str]) -> dict[str, str]:
    """One colour per method, the same in every panel: in order of first appearance."""
    out: dict[str, str] = {}
    for name in names:
        out.setdefault(name, f"C{len(out) % 10}")
    return out


def plot(rows: list[dict], curve_data: dict, domains: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colour = method_colours([r["method"] for r in rows] + list(curve_data))
    for name, pts in curve_data.items():
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=colour[name])
    for r in rows:
        if r["method"] not in curve_data and math.isfinite(r["mean"]):
            ax1.scatter([r["sequences"]], [r["mean"]], marker="s", label=r["method"], color=colour[r["method"]])
    ax1.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax1.axhline(0.0, color="grey", ls=":", lw=0.8)
    ax1.set_xlabel("sequences sampled")
    ax1.set_ylabel("normalised score (mean over domains)")
    ax1.set_title("normalised score against samples")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7)
    width = 0.8 / max(len(domains), 1)
    # Bars keep their method's colour (as in the left panel); domains differ by hatching.
    for i, d in enumerate(domains):
        hatch = HATCHES[i % len(HATCHES)]
        ax2.bar([j + i * width for j in range(len(rows))], [r["normalised"][d] for r in rows], width,
                color=[colour[r["method"]] for r in rows], hatch=hatch, edgecolor="white", lw=0)
        ax2.bar([0], [0], 0, color="lightgrey", hatch=hatch, edgecolor="white", label=d)  # legend entry
    ax2.set_xticks([j + width * (len(domains) - 1) / 2 for j in range(len(rows))])
    ax2.set_xticklabels([r["method"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax2.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax2.set_ylabel("normalised score")
    ax2.set_title("per domain (teacher = 1, SFT init = 0)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path, summary: dict) -> str:
    """`summary` holds 'sft', 'teachers' {domain: result}, 'methods' [result]; writes report.md/json/png."""
    sft, teachers = summary["sft"], summary["teachers"]
    domains = list(teachers)
    rows = build_table(summary["methods"], sft, teachers)
    md = markdown(rows, domains)
    ref = [f"- {sft['name']}: " + ", ".join(f"{d} {_f(sft['scores'][d][METRIC])}" for d in domains)]
    ref += [f"- teacher {d}: {_f(t['scores'][d][METRIC])} on {d} ({t['sequences']} sequences, {t['seconds']:.0f} s)"
            for d, t in teachers.items()]
    text = ("# MOPD reproduction\n\nScores: pass@1 at temperature 1 on held-out prompts; normalised "
            "(s - s_sft)/(s_teacher - s_sft).\n\n" + md + "\n\nReferences:\n" + "\n".join(ref) + "\n")
    (out_dir / "report.md").write_text(text)
    curve_data = curves(summary["methods"], sft, teachers)

    # This run as one seed: standard errors, sequences to 0.9.
    seeds = merge_seeds([summary])["rows"] if "eval_prompts" in summary else None
    (out_dir / "report.json").write_text(json.dumps({"rows": rows, "curves": curve_data, "one_seed": seeds,
                                                     **summary}, indent=1, default=str))
    plot(rows, curve_data, domains, out_dir / "report.png")
    return text
