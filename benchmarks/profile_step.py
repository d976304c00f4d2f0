"""Where a mopd training step's time goes: wall and CPU seconds of each piece of `train_one_step`.

Builds one setup of bench_vs_trl.py and wraps, on that run's objects only, the rollout
engine's generate and weight push, the teacher scoring, the student's forward
(`token_logprobs`), backward, clipping and the optimiser step with timers. With a '-ahead'
setup the update and the sampling run on two threads at once: their pieces overlap, and the
CPU column counts both threads.

    python benchmarks/profile_step.py [--setup mopd-vllm-bf16] [--steps 3]
    python benchmarks/profile_step.py --setup mopd-vllm-bf16w --batch 64 --max-new-tokens 32  # a matrix cell

"other" is the whole step less the pieces: batching and tokenising prompts, the loss, metrics.
`--out` writes the pieces of every step as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_vs_trl  # noqa: E402
from common import WORK_DIR, numbered_prompts, print_table, student_dir, teacher_dir, write_prompts  # noqa: E402


def timed(times: dict, name: str, fn):
    def wrapper(*a, **kw):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **kw)
        finally:
            w, c = times.setdefault(name, [0.0, 0.0])
            times[name] = [w + time.perf_counter() - wall, c + time.process_time() - cpu]
    return wrapper


def instrument(run, times: dict) -> None:
    import mopd.training.update as update

    run.engine.generate = timed(times, "generation", run.engine.generate)
    run.objective.score = timed(times, "teacher scoring", run.objective.score)
    update.token_logprobs = timed(times, "student forward (token_logprobs)", update.token_logprobs)
    run.dist.backward = timed(times, "backward", run.dist.backward)
    run.dist.clip_grad_norm = timed(times, "gradient clipping", run.dist.clip_grad_norm)
    run.optimizer.step = timed(times, "optimiser step", run.optimizer.step)
    run.engine.sync_weights = timed(times, "weight push to the engine", run.engine.sync_weights)
    # sampling.ahead: the push happens in ready(), during the next update
    run.engine.ready = timed(times, "weight push to the engine", run.engine.ready)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", default="mopd-vllm-bf16", choices=[s for s in bench_vs_trl.SETUPS if "mopd" in s])
    p.add_argument("--steps", type=int, default=3, help="steps to profile (the first one warms up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one: each piece's own cost)")
    p.add_argument("--attn", default=None, help="transformers attention kernel (as bench_vs_trl.py --attn)")
    p.add_argument("--vllm-compile", action="store_true", help="as bench_vs_trl.py --vllm-compile")
    p.add_argument("--batch", type=int, default=bench_vs_trl.BATCH, help="prompts per step")
    p.add_argument("--rollouts", type=int, default=1, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None, help="JSON of every step's pieces")
    args = p.parse_args(argv)
    bargs = bench_vs_trl.parse_args(["--work-dir", str(args.work_dir), "--threads", str(args.threads),
                                     "--batch", str(args.batch), "--rollouts", str(args.rollouts),
                                     "--max-new-tokens", str(args.max_new_tokens)]
                                    + (["--attn", args.attn] if args.attn else [])
                                    + (["--vllm-compile"] if args.vllm_compile else []))
    bench_vs_trl.worker_env(bargs, args.setup)
    from mopd.build import build_run
    from mopd.training.loop import pick_driver

    prompts = str(write_prompts(args.work_dir / f"prompts-{args.batch}.jsonl", prompts=numbered_prompts(args.batch)))
    run = build_run(bench_vs_trl.mopd_config(bargs, args.setup, str(student_dir(args.work_dir)),
                                                  str(teacher_dir(args.work_dir)), prompts))
    times: dict = {}
    instrument(run, times)
    driver = pick_driver(run)
    profile = []
    for i in range(args.steps):
        times.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        m = driver.step(last=False)  # with sampling.ahead: the pieces overlap
        run.step += 1
        rows = [[k, w, c] for k, (w, c) in times.items()]
        whole = [time.perf_counter() - wall, time.process_time() - cpu]
        rows.append(["other", whole[0] - sum(r[1] for r in rows), whole[1] - sum(r[2] for r in rows)])
        rows.append(["whole step", *whole])
        profile.append({"step": i, "completion_tokens": int(m["completion_tokens"]),
                        "pieces": {r[0]: {"wall_s": r[1], "cpu_s": r[2]} for r in rows}})
        print_table(f"{args.setup}, step {i}{' (warm-up)' if i == 0 else ''}: "
                    f"{int(m['completion_tokens'])} completion tokens", ["piece", "wall s", "CPU s"], rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"setup": args.setup, "batch": args.batch, "rollouts": args.rollouts,
                                        "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                                        "steps": profile}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
