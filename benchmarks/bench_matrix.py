"""mopd against TRL across step shapes: prompts per step x new tokens, and a GRPO-shaped row.

Per cell, one lockstep run of bench_vs_trl.py (each setup in its own process, stepped in turn)
with three kinds of setup, chosen for the CPU it runs on (`mopd.models.precision.native_bf16`):

    native bf16   mopd-vllm-bf16w-ahead (fastest), mopd-vllm-bf16w (strictly on-policy),
                  trl and trl-bf16 (the headline is the faster of the two whose steps train)
    emulated      mopd-vllm-ahead (fastest), mopd-vllm (strictly on-policy), trl

Cells are written PxN (P prompts x 1 completion, at most N new tokens) or PxRxN (P prompts x R
rollouts each: mopd samples R completions per prompt, TRL gets each prompt as R rows). The
default is {8, 64, 256} x {32, 256, 1024} and the GRPO row 16x8x{32, 256, 1024}, smallest first.
A cell whose estimated time exceeds --budget-min is skipped, with the estimate as its reason:
the per-token step time and the fixed cost (loading, warm-up) of the largest cell measured so
far, with every completion at its full length (an upper bound: chat answers often stop early).

Next to each figure: its share of the machine's limit (limits.py), FLOPs per completion token
x tokens/s over the rate of a large matrix product measured at the start of the cell, in the
setup's dtype, on the setup's threads (a '-ahead' setup: both sides together).

    python benchmarks/bench_matrix.py --cells 8x32,64x32,16x8x32 --threads 1 --attn eager  # the documented subset
    python benchmarks/bench_matrix.py --budget-min 20                                    # every cell that fits
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_vs_trl  # noqa: E402
import limits  # noqa: E402
from common import WORK_DIR, machine, numbered_prompts, print_table, student_dir, teacher_dir  # noqa: E402

DEFAULT_CELLS = ([(p, 1, n) for n in (32, 256, 1024) for p in (8, 64, 256)]
                 + [(16, 8, n) for n in (32, 256, 1024)])
DOCUMENTED = "8x32,64x32,16x8x32"


def parse_cell(text: str) -> tuple[int, int, int]:
    """'64x256' -> (64, 1, 256); '16x8x32' -> (16, 8, 32): prompts, rollouts per prompt, new tokens."""
    parts = [int(x) for x in text.lower().split("x")]
    if len(parts) == 2:
        parts.insert(1, 1)
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"a cell is PxN or PxRxN with positive integers, not {text!r}")
    return tuple(parts)


def cell_name(cell: tuple[int, int, int]) -> str:
    p, r, n = cell
    return f"{p}x{n}" if r == 1 else f"{p}x{r}x{n}"


def setups_for(native_bf16: bool | None) -> dict[str, object]:
    """mopd's fastest setting on this CPU, its strictly on-policy twin, and the TRL settings to race."""
    if native_bf16:
        return {"fast": "mopd-vllm-bf16w-ahead", "onpolicy": "mopd-vllm-bf16w", "trl": ["trl", "trl-bf16"]}
    return {"fast": "mopd-vllm-ahead", "onpolicy": "mopd-vllm", "trl": ["trl"]}


def cpu_facts() -> dict:
    from mopd.models.precision import cpu_flags, native_bf16

    flags = cpu_flags() or set()
    return {"native_bf16": native_bf16(torch.device("cpu")),
            "flags": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16"))}


def cost_model(result: dict, rows: int, new_tokens: int, warmup: int, steps: int) -> dict:
    """Seconds per completion token (all setups of a cell together, in turn) and the rest of the
    cell's wall time (loading, warm-up steps, the parent), from one measured cell."""
    per_token = sum(s["median_step_s"] / max(1.0, s["completion_tokens"] / s["measured_steps"])
                    for s in result["results"].values())
    stepping = sum((warmup + steps) * s["median_step_s"] for s in result["results"].values())
    return {"tokens": rows * new_tokens, "s_per_token": per_token, "fixed_s": max(0.0, result["wall_s"] - stepping)}


def estimate_s(models: list[dict], rows: int, new_tokens: int, warmup: int, steps: int) -> float | None:
    """A cell's wall seconds from the largest cell measured so far, every completion at full length."""
    if not models:
        return None
    m = max(models, key=lambda x: x["tokens"])
    return m["fixed_s"] + (warmup + steps) * m["s_per_token"] * rows * new_tokens


def prompt_tokens(student: str, prompts: int) -> float:
    """Mean length of the chat-formatted prompts (with the generation prompt), in the student's tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q, _ in numbered_prompts(prompts)]
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return sum(lens) / len(lens)


def peaks(threads: int, native: bool | None) -> dict[str, float]:
    """Matmul FLOP/s per dtype: on `threads`, and for '-ahead' setups two sides of threads // 2."""
    side = max(1, threads // 2)
    out = {}
    for name, dtype in [("float32", torch.float32)] + ([("bfloat16", torch.bfloat16)] if native else []):
        out[name] = limits.gemm_rate(dtype, threads)
        out[name + "-ahead"] = 2 * (out[name] if side == threads else limits.gemm_rate(dtype, side))
    return out


def setup_peak(setup: str, peak: dict[str, float]) -> float:
    dtype = "bfloat16" if "-bf16" in setup and "bfloat16" in peak else "float32"
    return peak[dtype + ("-ahead" if setup.endswith("-ahead") else "")]


def annotate(result: dict, cfg: dict, prompt_len: float, rows: int, peak: dict[str, float]) -> None:
    """FLOPs per token, achieved FLOP/s and share of the limit, into each setup's summary."""
    for setup, s in result["results"].items():
        completion = s["completion_tokens"] / (s["measured_steps"] * rows)
        fpt = limits.flops_per_token(cfg, limits.mean_context(prompt_len, completion))
        s["mean_completion_tokens"] = completion
        s["flops_per_token"] = fpt
        s["limit"] = limits.share_of_limit(s["tokens_per_s"], fpt["total"], setup_peak(setup, peak))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="all", help=f"comma-separated PxN / PxRxN, or 'all' (the documented "
                   f"subset: {DOCUMENTED})")
    p.add_argument("--budget-min", type=float, default=15.0, help="skip a cell estimated to take longer")
    p.add_argument("--steps", type=int, default=2, help="measured steps per setup and cell")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="as bench_vs_trl.py (default: all cores)")
    p.add_argument("--attn", default=None, help="as bench_vs_trl.py")
    p.add_argument("--accum", type=int, default=1, help="as bench_vs_trl.py (every setup alike)")
    p.add_argument("--vllm-compile", action="store_true", help="as bench_vs_trl.py")
    p.add_argument("--apart", action="store_true", help="each setup in its own run, one process resident at "
                   "a time (when the setups of a large cell do not fit in memory together); not in turn")
    p.add_argument("--mopd-only", action="store_true", help="mopd's two settings, no TRL (cells where TRL "
                   "does not fit the time): no ratio, the share of the limit still")
    p.add_argument("--setups-for", choices=["this-cpu", "native-bf16", "emulated-bf16"], default="this-cpu",
                   help="race the setups chosen for this CPU, or those of a CPU with or without native bf16 "
                        "(emulated-bf16 on a bf16 CPU: the float32 fallback, whose matmuls use no bf16 units)")
    p.add_argument("--trl-setups", default=None, help="comma-separated TRL setups to race (default: those chosen "
                   "for the CPU)")
    p.add_argument("--reuse", action="store_true", help="with --apart: read a setup's results from an earlier run "
                   "of the cell (its matrix-CELL-SETUP.json, same settings) instead of running it again")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None, help="JSON (default: WORK_DIR/matrix.json)")
    args = p.parse_args(argv)
    cells = DEFAULT_CELLS if args.cells == "all" else [parse_cell(c) for c in args.cells.split(",") if c.strip()]
    args.cells = sorted(cells, key=lambda c: (c[0] * c[1] * c[2], c))
    return args


def reused(path: Path, args) -> dict | None:
    """With --reuse, a setup's results from an earlier --apart run of the same cell and settings."""
    if not (args.reuse and path.is_file()):
        return None
    res = json.loads(path.read_text())
    same = {k: res["settings"].get(k) for k in ("steps", "warmup", "threads", "attn", "vllm_compile", "accum")}
    wanted = {k: getattr(args, k) for k in same} | {"threads": args.threads or bench_vs_trl.parse_args([]).threads}
    if same != wanted:
        raise SystemExit(f"--reuse: {path} was measured with {same}; move it away or match its settings")
    print(f"reusing {path}")
    return res


def run_cell(args, cell, setups: list[str], out: Path):
    """One lockstep run of bench_vs_trl.py over the setups; with --apart one run per setup, merged."""
    if args.apart and len(setups) > 1:
        paths = {s: out.with_name(f"{out.stem}-{s}.json") for s in setups}
        runs = [reused(paths[s], args) or run_cell(args, cell, [s], paths[s]) for s in setups]
        return {"apart": True, "wall_s": sum(x["wall_s"] for x in runs),
                "results": {k: v for x in runs for k, v in x["results"].items()}}
    p, r, n = cell
    argv = ["--setups", ",".join(setups), "--batch", str(p), "--rollouts", str(r), "--max-new-tokens", str(n),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--work-dir", str(args.work_dir),
            "--out", str(out)]
    argv += (["--threads", str(args.threads)] if args.threads else []) + (["--attn", args.attn] if args.attn else [])
    argv += ["--vllm-compile"] if args.vllm_compile else []
    argv += ["--accum", str(args.accum)]
    return bench_vs_trl.main(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_facts()
    choice = setups_for({"this-cpu": cpu["native_bf16"], "native-bf16": True, "emulated-bf16": False}[args.setups_for])
    if args.trl_setups:
        choice["trl"] = [t.strip() for t in args.trl_setups.split(",") if t.strip()]
    setups = [choice["fast"], choice["onpolicy"], *([] if args.mopd_only else choice["trl"])]
    student = str(student_dir(args.work_dir))
    teacher_dir(args.work_dir)
    cfg = json.loads((Path(student) / "config.json").read_text())
    threads = args.threads or bench_vs_trl.parse_args([]).threads
    print(f"CPU flags {cpu['flags']}, native bf16: {cpu['native_bf16']}; setups {setups}")
    cells, skipped, models = {}, {}, []
    t0 = time.perf_counter()
    for cell in args.cells:
        name, (p, r, n) = cell_name(cell), cell
        est = estimate_s(models, p * r, n, args.warmup, args.steps)
        if est is not None and est > 60 * args.budget_min:
            skipped[name] = f"estimated {est / 60:.0f} min > --budget-min {args.budget_min:g}"
            print(f"skipping {name}: {skipped[name]}")
            continue
        print(f"\n=== cell {name}: {p} prompts x {r} rollout(s) x {n} new tokens"
              + (f" (estimated {est / 60:.1f} min)" if est else ""))
        peak = peaks(threads, cpu["native_bf16"])
        try:
            res = run_cell(args, cell, setups, args.work_dir / f"matrix-{name}.json")
        except (SystemExit, OSError, RuntimeError) as e:  # a setup failed (out of memory...): keep the reason
            skipped[name] = f"failed: {str(e)[-300:]}"
            print(f"cell {name} {skipped[name]}")
            continue
        annotate(res, cfg, prompt_tokens(student, p), p * r, peak)
        res["peak_flops_per_s"] = peak
        cells[name] = res
        models.append(cost_model(res, p * r, n, args.warmup, args.steps))
    results = {"benchmark": "matrix", "cpu": cpu, "setups": choice, "threads": threads, "wall_s": time.perf_counter() - t0,
               "settings": {"mopd_only": args.mopd_only, "apart": args.apart, "steps": args.steps, "warmup": args.warmup, "attn": args.attn,
                            "vllm_compile": args.vllm_compile, "accum": args.accum, "setups_for": args.setups_for,
                            "budget_min": args.budget_min},
               "cells": cells, "skipped": skipped}
    rows = table_rows(results)
    print_table(f"mopd against TRL, tokens/s per cell ({threads} thread(s); share = achieved FLOP/s / measured matmul "
                "rate)", COLUMNS, rows)
    for k, v in skipped.items():
        print(f"skipped {k}: {v}")
    out = args.out or args.work_dir / "matrix.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(COLUMNS, rows))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return results


COLUMNS = ["cell", "mopd fastest tok/s", "mopd on-policy tok/s", "TRL tok/s (setting)", "fastest / TRL",
           "on-policy / TRL", "per CPU-s: fastest / TRL", "on-policy / TRL", "share of limit: fastest",
           "share: on-policy"]


def table_rows(results: dict) -> list[list]:
    """One row per measured cell: mopd's two settings, TRL's headline one, ratios, shares of the limit."""
    rows = []
    fast, onp = results["setups"]["fast"], results["setups"]["onpolicy"]
    for name, res in results["cells"].items():
        s, best = res["results"], bench_vs_trl.headline_trl({k: v for k, v in res["results"].items()
                                                              if k.startswith("trl")})
        trl = s[best]["tokens_per_s"] if best else None
        rows.append([name, s[fast]["tokens_per_s"], s[onp]["tokens_per_s"], f"{trl:.2f} ({best})" if trl else "-",
                     f"{s[fast]['tokens_per_s'] / trl:.2f}x" if trl else "-",
                     f"{s[onp]['tokens_per_s'] / trl:.2f}x" if trl else "-",
                     *[f"{s[k]['tokens_per_cpu_s'] / s[best]['tokens_per_cpu_s']:.2f}x" if trl else "-"
                       for k in (fast, onp)],
                     f"{100 * s[fast]['limit']['share']:.1f}%", f"{100 * s[onp]['limit']['share']:.1f}%"])
    return rows


def markdown(columns: list[str], rows: list[list]) -> str:
    fmt = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                     + ["| " + " | ".join(r) + " |" for r in fmt]) + "\n"


if __name__ == "__main__":
    main()
