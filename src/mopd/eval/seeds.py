"""One table from several seeds of the same experiment: mean and standard deviation over seeds,
the evaluation's standard error, and the sequences each method needs to reach a normalised level.

Each seed is normalised against its own SFT init and teachers, then the seeds are averaged.
The standard error of one evaluation is an upper bound over the held-out prompts:
sqrt(p (1 - p) / n) for a pass@1 of p on n prompts (each prompt's mean over its samples lies in
[0, 1], so its variance is at most p (1 - p)); divided by the teacher's gain when normalised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mopd.eval.scores import METRIC, normalised

LEVEL = 0.9  # the sample-efficiency threshold: normalised score on every domain


def mean_std(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for a single value."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": mean, "std": std, "n": len(vals)}


def eval_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def sequences_to_reach(curve: list[tuple[int, dict[str, float]]], level: float = LEVEL) -> int | None:
    """The first curve point whose normalised score is >= level on every domain; None if never."""
    for seqs, norm in sorted(curve, key=lambda p: p[0]):
        if norm and all(math.isfinite(v) and v >= level for v in norm.values()):
            return int(seqs)
    return None


class Seed:
    """One seed's report.json, with its own normalisation."""

    def __init__(self, data: dict, run_dir: str | None = None):
        self.data, self.run_dir = data, run_dir
        self.domains = list(data["teachers"])
        self.sft = {d: data["sft"]["scores"][d][METRIC] for d in self.domains}
        self.top = {d: data["teachers"][d]["scores"][d][METRIC] for d in self.domains}
        self.n_eval = data.get("eval_prompts", {})

    def norm(self, scores: dict) -> dict[str, float]:
        return {d: normalised(scores[d][METRIC], self.sft[d], self.top[d]) for d in self.domains}

    def se(self, scores: dict) -> dict[str, tuple[float, float]]:
        """(raw, normalised) standard error of each domain's evaluation."""
        out = {}
        for d in self.domains:
            raw = eval_se(scores[d][METRIC], int(self.n_eval.get(d, 0)))
            gap = self.top[d] - self.sft[d]
            out[d] = (raw, raw / gap if gap > 1e-9 else float("nan"))
        return out

    def curve(self, method: dict) -> list[tuple[int, dict[str, float]]]:
        return [(int(s), self.norm(sc)) for s, sc in method.get("curve", [])]


def _method_row(name: str, seeds: list[Seed], found: list[dict]) -> dict:
    domains = seeds[0].domains
    norms = [s.norm(m["scores"]) for s, m in zip(seeds, found)]
    ses = [s.se(m["scores"]) for s, m in zip(seeds, found)]
    per_seed_mean = [sum(n.values()) / len(n) for n in norms]
    reach = [sequences_to_reach(s.curve(m)) if m.get("curve") else None for s, m in zip(seeds, found)]
    has_curve = any(m.get("curve") for m in found)
    return {
        "method": name, "seeds": len(found),
        "raw": {d: {**mean_std([m["scores"][d][METRIC] for m in found]),
                    "se": mean_std([se[d][0] for se in ses])["mean"]} for d in domains},
        "normalised": {d: {**mean_std([n[d] for n in norms]), "se": mean_std([se[d][1] for se in ses])["mean"]}
                       for d in domains},
        "mean": mean_std(per_seed_mean),
        "sequences": found[0]["sequences"], "seconds": mean_std([m["seconds"] for m in found])["mean"],
        f"sequences_to_{LEVEL:g}": ({"per_seed": reach, "mean": (sum(reach) / len(reach)
                                     if all(r is not None for r in reach) else None)} if has_curve else None),
    }


def merged_curves(seeds: list[Seed], name: str) -> dict[str, list[dict]]:
    """Per domain and for the mean over domains: mean and std over seeds at each curve point."""
    by_x: dict[int, list[dict[str, float]]] = {}
    for s in seeds:
        m = next((m for m in s.data["methods"] if m["name"] == name), None)
        for x, norm in s.curve(m) if m else []:
            by_x.setdefault(x, []).append({**norm, "mean": sum(norm.values()) / len(norm)})
    keys = seeds[0].domains + ["mean"]
    return {k: [{"sequences": x, **mean_std([p[k] for p in pts])} for x, pts in sorted(by_x.items())] for k in keys}


def teacher_matrix(seeds: list[Seed]) -> dict[str, dict[str, dict]]:
    """Rows: the SFT init and each teacher; columns: every domain (raw pass@1, mean/std over seeds)."""
    domains = seeds[0].domains
    rows = {"SFT init": {d: mean_std([s.sft[d] for s in seeds]) for d in domains}}
    for t in domains:
        rows[f"teacher {t}"] = {d: mean_std([s.data["teachers"][t]["scores"][d][METRIC] for s in seeds])
                                for d in domains}
    return rows


def merge_seeds(reports: list[dict], run_dirs: list[str] | None = None) -> dict:
    seeds = [Seed(r, d) for r, d in zip(reports, run_dirs or [None] * len(reports))]
    names = list(dict.fromkeys(m["name"] for s in seeds for m in s.data["methods"]))
    rows, curves = [], {}
    for name in names:
        pairs = [(s, m) for s in seeds for m in s.data["methods"] if m["name"] == name]
        rows.append(_method_row(name, [p[0] for p in pairs], [p[1] for p in pairs]))
        if any(m.get("curve") for _, m in pairs):
            curves[name] = merged_curves([p[0] for p in pairs], name)
    return {"seeds": len(seeds), "domains": seeds[0].domains, "level": LEVEL, "rows": rows, "curves": curves,
            "teacher_matrix": teacher_matrix(seeds)}


def load_reports(run_dirs: list[str | Path]) -> list[dict]:
    return [json.loads((Path(d) / "report.json").read_text()) for d in run_dirs]
