"""Length buckets: one step's rows in micro-batches of similar length, for teacher scoring and
for the student's update, against the micro-batches mopd used before.

A step's completions range from a few tokens to the limit; each micro-batch is padded to its
longest row. SmolLM2-135M-Instruct gets ROWS chat prompts (the benchmark prompts, with the chat
template) each followed by a completion of random tokens whose length is drawn from an
exponential distribution with mean MEAN, capped at MAX_NEW_TOKENS (a chat model stopping at EOS).

  teacher   HFTeacher.score (buckets of at most 32 rows and the token limit) against fixed
            micro-batches of 32 rows in arrival order (mopd before);
  update    update_step (forward, backward; a zero learning rate) with the whole batch in one
            micro-batch (mopd before, grad_accum_steps 1), in 4 length-sorted micro-batches
            (grad_accum_steps 4), and in buckets of at most 1024 / 2048 / 4096 padded tokens.

Each way runs REPEATS times, the ways alternating; the tables give the median seconds, the
padded tokens each way runs through the model and the speed-up over mopd before.

    python benchmarks/bench_length_buckets.py [--rows 64] [--max-new-tokens 256] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import WORK_DIR, median, numbered_prompts, print_table, student_dir, write_json  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--mean", type=float, default=94.0, help="mean completion length before the cap")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--micro-batch-tokens", type=int, default=None, help="the teacher's token limit (default: its own)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def step_batch(tok, rows: int, max_new: int, mean: float, seed: int = 0):
    from mopd.rollout.types import Rollout, collate

    rng = random.Random(seed)
    rollouts = []
    for q, _ in numbered_prompts(rows):
        text = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False).input_ids
        n = min(max_new, 1 + int(rng.expovariate(1 / mean)))
        rollouts.append(Rollout.from_completion("chat", prompt, [rng.randrange(100, tok.vocab_size) for _ in range(n)],
                                                [0.0] * n))
    return collate(rollouts, pad_id=tok.pad_token_id or 0)


def arrival_order(teacher, batch) -> tuple[float, int]:
    """The teacher's forward over fixed micro-batches of rows as they come (seconds, padded tokens)."""
    from mopd.models.logprobs import token_logprobs

    t0, padded = time.perf_counter(), 0
    with torch.inference_mode():
        for s in range(0, batch.size, teacher.micro_batch_size):
            mb = batch.select(list(range(s, min(s + teacher.micro_batch_size, batch.size))))
            padded += mb.input_ids.numel()
            token_logprobs(teacher.model, mb.input_ids, mb.attention_mask, mb.gen_mask, chunk_size=teacher.chunk_size)
    return time.perf_counter() - t0, padded


def buckets(teacher, batch) -> tuple[float, int]:
    padded = sum(len(g) * int(batch.attention_mask[g].sum(-1).max())
                 for g in teacher.buckets(batch, torch.device("cpu")))
    t0 = time.perf_counter()
    teacher.score(batch)
    return time.perf_counter() - t0, padded


def update_ways() -> dict:
    """(grad_accum_steps, micro_batch_tokens) of each way of grouping the update's rows."""
    whole = 10**9  # no token limit: the groups grad_accum_steps makes
    return {"one micro-batch (before)": (1, whole), "grad_accum_steps 4": (4, whole),
            **{f"buckets of {n} tokens": (1, n) for n in (1024, 2048, 4096)}}


def timed_update(model, batch, accum: int, tokens: int) -> tuple[float, int]:
    from mopd.config.schema import AlgorithmConfig
    from mopd.objectives.mopd import MOPDObjective
    from mopd.training.update import micro_batches, update_step

    g = torch.Generator().manual_seed(0)
    signals = {"lp_teacher": (batch.sample_logprobs - torch.rand(batch.input_ids.shape, generator=g)) * batch.gen_mask}
    objective = MOPDObjective(None, AlgorithmConfig(is_correction=None))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    padded = sum(len(g) * int(batch.attention_mask[g].sum(-1).max()) for g in micro_batches(batch, accum, tokens))
    t0 = time.perf_counter()
    update_step(model, opt, sched, batch, signals, objective, accum, 1.0, micro_batch_tokens=tokens)
    return time.perf_counter() - t0, padded


def race(title: str, ways: dict, repeats: int, real: int) -> dict:
    """Run each way `repeats` times, alternating; print the table; the medians and padded tokens."""
    times, padded = {k: [] for k in ways}, {}
    for _ in range(repeats):
        for k, fn in ways.items():
            s, padded[k] = fn()
            times[k].append(s)
            print(f"{title}, {k}: {s:.2f} s", flush=True)
    before = median(times[next(iter(ways))])
    rows = [[k, f"{median(times[k]):.2f}", f"{padded[k]:,}", f"{padded[k] / real:.2f}", f"{before / median(times[k]):.2f}x"]
            for k in ways]
    print_table(title, ["way", "median s", "padded tokens", "padded / real", "speed-up"], rows)
    return {"seconds": times, "padded": padded, "speedup": {k: before / median(times[k]) for k in ways}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from mopd.config.schema import ModelSpec
    from mopd.models.loading import load_model, load_tokenizer
    from mopd.teachers.hf_teacher import HFTeacher

    spec = ModelSpec(path=str(student_dir(args.work_dir)), dtype=args.dtype)
    tok = load_tokenizer(spec)
    model = load_model(spec, tok)
    teacher = HFTeacher("teacher", model, micro_batch_tokens=args.micro_batch_tokens)
    batch = step_batch(tok, args.rows, args.max_new_tokens, args.mean)
    real = int(batch.attention_mask.sum())
    where = f"{args.rows} rows, {real:,} real tokens, {args.dtype}, {args.threads} thread(s)"
    buckets(teacher, batch)  # warm-up
    results = {"benchmark": "length_buckets", "settings": {k: v for k, v in vars(args).items() if k not in ("work_dir", "out")},
               "real_tokens": real}
    results["teacher"] = race(f"teacher scoring, {where}", {
        "arrival order, 32 rows a micro-batch (before)": lambda: arrival_order(teacher, batch),
        "length buckets": lambda: buckets(teacher, batch)}, args.repeats, real)
    model.requires_grad_(True).train()
    results["update"] = race(f"update, {where}", {k: (lambda a=a, n=n: timed_update(model, batch, a, n))
                                                  for k, (a, n) in update_ways().items()}, args.repeats, real)
    write_json(args.out or args.work_dir / "length_buckets.json", results)
    return results


if __name__ == "__main__":
    main()
