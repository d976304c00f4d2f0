"""The report of several seeds: Markdown table, report.json and report.png with bands.

`mopd report RUN_DIR RUN_DIR ... --out DIR` writes it from the seeds' own reports.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mopd.eval.report import method_colours
from mopd.eval.seeds import LEVEL, load_reports, merge_seeds


# Students whose distance from the init is printed beside the teachers' (stage directory of each).
STUDENTS = {"MOPD": "mopd", "Mix-RL": "mix_rl", "Off-Policy FT": "offpolicy", "Param-Merge (average)": "merge_avg",
            "Param-Merge (task arithmetic x1)": "merge_task"}


def _pm(cell: dict | None, se: bool = True) -> str:
    if not cell or cell.get("mean") is None:
        return "—"
    text = f"{cell['mean']:.2f}"
    if cell.get("std") is not None:
        text += f" ± {cell['std']:.2f}"
    if se and cell.get("se") is not None and math.isfinite(cell["se"]):
        text += f" [{cell['se']:.2f}]"
    return text


def _reach(row: dict) -> str:
    r = row.get(f"sequences_to_{LEVEL:g}")
    if r is None:
        return "n/a"
    per = ", ".join("never" if x is None else f"{x:,}" for x in r["per_seed"])
    return f"{r['mean']:,.0f} ({per})" if r["mean"] is not None else f"— ({per})"


def markdown(merged: dict) -> str:
    doms = merged["domains"]
    head = ["method"] + [f"{d} (norm.)" for d in doms] + ["mean", f"seqs to {LEVEL:g} (per seed)", "sequences"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in merged["rows"]:
        cells = ([r["method"]] + [_pm(r["normalised"][d]) for d in doms] + [_pm(r["mean"], se=False), _reach(r),
                 str(r["sequences"])])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Raw pass@1 of the SFT init and each teacher on every domain (mean ± std over seeds):", "",
              "| model | " + " | ".join(doms) + " | distance from init |", "|" + "---|" * (len(doms) + 2)]
    dist = merged.get("weight_distance", {})
    for name, cells in merged["teacher_matrix"].items():
        dd = dist.get(name)
        lines.append(f"| {name} | " + " | ".join(_pm(cells[d], se=False) for d in doms)
                     + f" | {_pm(dd, se=False) if dd else '—'} |")
    others = [f"{n} {_pm(dist[n], se=False)}" for n in STUDENTS if n in dist]
    lines += ["", "Distance from init: the weights' L2 distance from the seed's SFT init, relative to the init's norm"
              + (f"; students: {', '.join(others)}." if others else ".")]
    return "\n".join(lines)


def weight_distances(run_dirs: list[str | Path], names: dict[str, str]) -> dict[str, dict]:
    """L2 distance of each named stage's weights from its seed's SFT init, relative to the init's norm."""
    from safetensors.torch import load_file

    from mopd.eval.seeds import mean_std

    out: dict[str, list[float]] = {}
    for run in run_dirs:
        init = load_file(str(Path(run) / "sft" / "model" / "model.safetensors"))
        base = math.sqrt(sum(float((v.float() ** 2).sum()) for v in init.values()))
        for label, stage in names.items():
            f = Path(run) / stage / "model" / "model.safetensors"
            if not f.is_file():
                continue
            other = load_file(str(f))
            diff = math.sqrt(sum(float(((other[k].float() - v.float()) ** 2).sum()) for k, v in init.items()))
            out.setdefault(label, []).append(diff / base)
    return {k: mean_std(v) for k, v in out.items()}


def plot(merged: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["mean"] + merged["domains"]
    rows_n = -(-(len(keys) + 1) // 3)
    fig, grid = plt.subplots(rows_n, 3, figsize=(15, 4.6 * rows_n), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(keys) + 1:]:
        ax.axis("off")
    colour = method_colours([r["method"] for r in merged["rows"]])
    for r in merged["rows"]:  # methods without a curve: their final score, at their budget
        if r["method"] not in merged["curves"] and r["mean"]["mean"] is not None:
            axes[0].errorbar([r["sequences"]], [r["mean"]["mean"]], yerr=[r["mean"]["std"] or 0], fmt="s",
                             color=colour[r["method"]], label=r["method"], capsize=3)
    for ax, key in zip(axes, keys):
        for name, per_key in merged["curves"].items():
            pts = [p for p in per_key[key] if p["mean"] is not None]
            xs, ys = [p["sequences"] for p in pts], [p["mean"] for p in pts]
            sd = [p["std"] or 0.0 for p in pts]
            ax.plot(xs, ys, marker="o", ms=3, color=colour[name], label=name)
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)],
                            color=colour[name], alpha=0.15, lw=0)
        for level, style in ((1.0, "--"), (LEVEL, ":"), (0.0, "-")):
            ax.axhline(level, color="grey", ls=style, lw=0.7)
        ax.set_title("mean over domains" if key == "mean" else key)
        ax.set_xlabel("sequences sampled")
    axes[0].set_ylabel(f"normalised score (mean ± std over {merged['seeds']} seeds)")
    axes[0].legend(fontsize=6)
    bars = axes[len(keys)]
    rows = [r for r in merged["rows"] if r["mean"]["mean"] is not None]
    bars.bar(range(len(rows)), [r["mean"]["mean"] for r in rows], yerr=[r["mean"]["std"] or 0 for r in rows],
             color=[colour[r["method"]] for r in rows], capsize=3)
    bars.set_xticks(range(len(rows)))
    bars.set_xticklabels([r["method"] for r in rows], rotation=40, ha="right", fontsize=6)
    bars.axhline(1.0, color="grey", ls="--", lw=0.7)
    bars.set_title("final score, mean over domains")
    if len(axes) > len(keys) + 1:
        _matrix(axes[len(keys) + 1], merged)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _matrix(ax, merged: dict) -> None:
    """The teacher x domain table as a heat map: the off-diagonal is what RL on one domain costs the others."""
    doms, table = merged["domains"], merged["teacher_matrix"]
    names = list(table)
    vals = [[table[n][d]["mean"] for d in doms] for n in names]
    ax.axis("on")
    ax.imshow(vals, cmap="viridis", vmin=0, vmax=1)
    for i, row in enumerate(vals):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(doms)), doms)
    ax.set_yticks(range(len(names)), names)
    ax.set_title("raw pass@1: init and teachers on every domain")


def write_merged_report(run_dirs: list[str | Path], out: Path) -> str:
    reports = load_reports(run_dirs)
    merged = merge_seeds(reports, [str(d) for d in run_dirs])
    names = {"SFT init": "sft", **{f"teacher {d}": f"teacher_{d}" for d in merged["domains"]}, **STUDENTS}
    try:
        merged["weight_distance"] = weight_distances(run_dirs, names)
    except (OSError, KeyError):  # the seeds' model directories are not at hand: leave the column empty
        merged["weight_distance"] = {}
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# MOPD over {merged['seeds']} seeds\n\nNormalised pass@1 (SFT init 0, teacher 1): mean ± std over "
            f"seeds [standard error of one evaluation].\n\n" + markdown(merged) + "\n")
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(merged, indent=1))
    plot(merged, out / "report.png")
    return text
