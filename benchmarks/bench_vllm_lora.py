"""vLLM rollouts from a LoRA student: pushing merged weights against vLLM's own LoRA.

After each update the vLLM engine has to sample from the new adapter. Two ways:
  merged   what mopd does (`rollout.engine: vllm`): `VLLMRolloutEngine.sync_weights` of the
           peft model pushes W + scale * B @ A of every adapted layer (and the other weights)
           into vLLM's in-place reload; vLLM then serves a plain model.
  native   vLLM's LoRA serving: the engine is started from the base model with
           `enable_lora=True`; after each update the adapter is written to disk (peft's
           `save_pretrained`) and generation gets a `LoRARequest` with a new id, so vLLM loads
           the new adapter and applies it, unmerged, at every forward.

One step of each (interleaved, on the same adapter): the adapter changes as an update would
change it, then the engine takes it and samples `--batch` chat prompts x `--max-new-tokens`
tokens at temperature 1. `--warmup` steps, then `--steps` measured ones; the median seconds per
step of each, and native / merged. Afterwards both sample greedily from the last adapter: the
tokens should agree, and so should their log-probs with each other and with the trainer's (the
peft model's forward).

    python benchmarks/bench_vllm_lora.py [--steps 3] [--warmup 1] [--rank 16] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import PROMPTS, WORK_DIR, median, print_table, student_dir, write_json  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETUPS = ("merged", "native")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's max_lora_rank accepts


def vllm_max_lora_rank(r: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of rank `r`."""
    for v in VLLM_LORA_RANKS:
        if v >= r:
            return v
    raise ValueError(f"LoRA rank {r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--rank", type=int, default=16, help="LoRA r (lora_alpha = 2r, all linear layers)")
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="measured steps per setup")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps per setup first")
    p.add_argument("--threads", type=int, default=1, help="torch threads (vLLM's CPU thread binding is off)")
    p.add_argument("--vllm-compile", action="store_true", help="the merged engine with torch.compile (vLLM "
                   "turns compilation off on a CPU when LoRA is enabled, so native is always eager)")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: WORK_DIR/bench_vllm_lora.json)")
    return p.parse_args(argv)


def chat_prompts(tok, n: int) -> list[list[int]]:
    """The first `n` benchmark prompts (cycled) as chat token ids, generation prompt added."""
    qs = [PROMPTS[i % len(PROMPTS)][0] for i in range(n)]
    return [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)) for q in qs]


def nudge_adapter(model, step: int, scale: float = 0.02) -> None:
    """Move every LoRA factor a little, as an optimiser step would: the engines must follow."""
    g = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def compare_completions(a: list[tuple[list[int], list[float]]], b: list[tuple[list[int], list[float]]]) -> dict:
    """Two engines' completions of the same prompts, each (token ids, their log-probs): how many
    rows are identical, the share of tokens equal before the rows first differ, and the largest
    log-prob difference over those shared prefixes."""
    same_rows, shared, total, worst = 0, 0, 0, 0.0
    for (ids_a, lp_a), (ids_b, lp_b) in zip(a, b, strict=True):
        n = 0
        while n < min(len(ids_a), len(ids_b)) and ids_a[n] == ids_b[n]:
            n += 1
        same_rows += ids_a == ids_b
        shared += n
        total += max(len(ids_a), len(ids_b))
        if n:
            worst = max(worst, max(abs(x - y) for x, y in zip(lp_a[:n], lp_b[:n])))
    return {"rows": len(a), "identical_rows": same_rows, "shared_prefix_share": shared / total if total else 1.0,
            "max_logprob_diff": worst}


def trainer_logprobs(model, prompts: list[list[int]], outs: list[tuple[list[int], list[float]]]):
    """The peft model's own log-probs of each completion's tokens (the trainer's view)."""
    from mopd.models.logprobs import token_logprobs

    rows = []
    for p, (ids, _) in zip(prompts, outs):
        full = torch.tensor([p + ids])
        gen = torch.zeros_like(full, dtype=torch.bool)
        gen[0, len(p):] = True
        with torch.no_grad():
            rows.append((ids, token_logprobs(model, full, torch.ones_like(full), gen).logprobs[0, len(p):].tolist()))
    return rows


def build(args, work: Path):
    """The peft student, its tokenizer, and the base model's directory (the native engine loads it)."""
    from mopd.config.schema import ModelSpec
    from mopd.models.loading import load_model, load_tokenizer, save_pretrained
    from mopd.models.lora import apply_lora

    if args.model == "tiny":
        from mopd.models.tiny import char_tokenizer, tiny_model

        tok = char_tokenizer()
        base = tiny_model(tok, hidden_size=64, num_heads=2, seed=1)
        base_dir = work / "tiny-base"
        save_pretrained(base, tok, base_dir)
    else:
        base_dir = student_dir(args.work_dir)
        spec = ModelSpec(path=str(base_dir), dtype="float32")
        tok = load_tokenizer(spec)
        base = load_model(spec, tok)
    model = apply_lora(base, {"r": args.rank, "lora_alpha": 2 * args.rank, "target_modules": ALL_LINEAR})
    model.eval()
    return model, tok, base_dir


class Merged:
    """mopd's path: the merged weights pushed into a plain vLLM engine."""

    def __init__(self, model, eos, opts):
        from mopd.rollout.vllm_engine import VLLMRolloutEngine

        self.model = model
        self.engine = VLLMRolloutEngine(model, eos, opts, seed=0)

    def take(self, step: int) -> None:
        self.engine.sync_weights(self.model)

    def generate(self, prompts, max_new, temperature, seed):
        outs = self.engine.generate(prompts, max_new, temperature, torch.Generator().manual_seed(seed))
        return [(c.token_ids, c.logprobs) for c in outs]

    def close(self):
        self.engine.close()


class Native:
    """vLLM's own LoRA: the base model loaded from disk, the adapter saved and requested per step."""

    def __init__(self, model, eos, opts, base_dir: Path, adapter_root: Path, rank: int):
        from mopd.models.vllm_startup import start_llm

        self.model, self.eos, self.root = model, eos, adapter_root
        self.llm = start_llm(str(base_dir), opts, "float32", seed=0, enable_lora=True,
                             max_lora_rank=vllm_max_lora_rank(rank), max_loras=1)
        self.request = None

    def take(self, step: int) -> None:
        from vllm.lora.request import LoRARequest

        path = self.root / f"step-{step}"
        self.model.save_pretrained(path)
        # A new id per update: vLLM caches adapters by id and would keep serving the old one.
        self.request = LoRARequest(f"student-{step}", step + 1, str(path))

    def generate(self, prompts, max_new, temperature, seed):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from mopd.models.vllm_startup import VLLM_LOCK

        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=torch.Generator().manual_seed(seed)).tolist()
        params = [SamplingParams(temperature=temperature, max_tokens=max_new, logprobs=0, seed=s,
                                 stop_token_ids=self.eos, detokenize=False) for s in seeds]
        with VLLM_LOCK:
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                     use_tqdm=False, lora_request=self.request)
        rows = []
        for out in outs:
            c = out.outputs[0]
            ids = list(c.token_ids)
            rows.append((ids, [s[t].logprob for s, t in zip(c.logprobs, ids)]))
        return rows

    def close(self):
        self.llm.llm_engine.engine_core.shutdown()


def main(argv=None) -> None:
    args = parse_args(argv)
    # One torch thread for the trainer side and for vLLM (its CPU worker would otherwise bind
    # OpenMP threads to every core, and then forbids changing the count).
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    for var, sub in (("VLLM_CACHE_ROOT", "vllm-cache"), ("TORCHINDUCTOR_CACHE_DIR", "inductor-cache")):
        os.environ.setdefault(var, str((args.work_dir / sub).resolve()))
    from mopd.config.schema import VLLMOptions

    args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vllm-lora-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        model, tok, base_dir = build(args, work)
        eos = [tok.eos_token_id]
        prompts = chat_prompts(tok, args.batch)
        opts = VLLMOptions(dtype="float32", enforce_eager=not args.vllm_compile, kv_cache_gb=0.25,
                           max_model_len=256 if args.model == "tiny" else 512)
        t0 = time.perf_counter()
        engines = {"merged": Merged(model, eos, opts)}
        start_s = {"merged": time.perf_counter() - t0}
        t0 = time.perf_counter()
        engines["native"] = Native(model, eos, opts.model_copy(update={"enforce_eager": True}), base_dir,
                                   work / "adapters", args.rank)
        start_s["native"] = time.perf_counter() - t0
        threads = torch.get_num_threads()
        times = {s: [] for s in SETUPS}
        take_s = {s: [] for s in SETUPS}
        tokens = {s: [] for s in SETUPS}
        again_s = {s: [] for s in SETUPS}
        try:
            for step in range(args.warmup + args.steps):
                nudge_adapter(model, step)  # the update: both engines sample from this adapter
                order = SETUPS if step % 2 == 0 else SETUPS[::-1]  # interleaved, alternating who goes first
                for s in order:
                    t0 = time.perf_counter()
                    engines[s].take(step)
                    t1 = time.perf_counter()
                    outs = engines[s].generate(prompts, args.max_new_tokens, 1.0, seed=step)
                    t2 = time.perf_counter()
                    times[s].append(t2 - t0)
                    take_s[s].append(t1 - t0)
                    tokens[s].append(sum(len(ids) for ids, _ in outs))
                print(f"step {step}: " + ", ".join(f"{s} {times[s][-1]:.2f} s" for s in SETUPS), flush=True)
            # Sampling alone, the adapter unchanged (native: already loaded): the per-token cost of
            # serving the adapter unmerged, without the load.
            for rep in range(args.steps):
                for s in (SETUPS if rep % 2 == 0 else SETUPS[::-1]):
                    t0 = time.perf_counter()
                    engines[s].generate(prompts, args.max_new_tokens, 1.0, seed=100 + rep)
                    again_s[s].append(time.perf_counter() - t0)
            greedy = {s: engines[s].generate(prompts, args.max_new_tokens, 0.0, seed=0) for s in SETUPS}
        finally:
            for e in engines.values():
                e.close()
        trainer = {s: trainer_logprobs(model, prompts, greedy[s]) for s in SETUPS}
        with model.disable_adapter():  # the base alone: how far the adapter moved the log-probs
            base_lp = trainer_logprobs(model, prompts, greedy["merged"])
    w = args.warmup
    results = {s: {"step_s": median(times[s][w:]), "take_s": median(take_s[s][w:]),
                   "generate_s": median([a - b for a, b in zip(times[s][w:], take_s[s][w:])]),
                   "generate_same_adapter_s": median(again_s[s]), "start_s": start_s[s],
                   "tokens_per_step": median(tokens[s][w:]), "steps_s": times[s], "take_steps_s": take_s[s]}
               for s in SETUPS}
    agreement = {"native_vs_merged": compare_completions(greedy["merged"], greedy["native"]),
                 **{f"{s}_vs_trainer": compare_completions(greedy[s], trainer[s]) for s in SETUPS},
                 "merged_vs_base_model": compare_completions(greedy["merged"], base_lp)}
    ratio = results["native"]["step_s"] / results["merged"]["step_s"]
    keys = ("take_s", "generate_s", "step_s", "generate_same_adapter_s")
    rows = [[s, *(r[k] for k in keys), r["tokens_per_step"]] for s, r in results.items()]
    rows.append(["native / merged", *(results["native"][k] / results["merged"][k] for k in keys), ""])
    print_table(f"LoRA student in vLLM ({args.model}, r={args.rank}, {args.batch} prompts x {args.max_new_tokens} "
                f"tokens, {args.threads} thread(s), median of {args.steps} steps)",
                ["setup", "push (merged) / save (native) s", "generate s (native: loads the adapter)", "step s",
                 "generate again, same adapter s", "tokens"], rows)
    print_table("Greedy completions of the last adapter", ["pair", "identical rows", "shared tokens",
                                                           "max |log-prob diff|"],
                [[k, "(same tokens, rescored)" if k != "native_vs_merged" else f"{v['identical_rows']}/{v['rows']}",
                  v["shared_prefix_share"], f"{v['max_logprob_diff']:.2e}"] for k, v in agreement.items()])
    write_json(args.out or args.work_dir / "bench_vllm_lora.json",
               {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "native_over_merged": ratio,
                "torch_threads_after_start": threads, "greedy_agreement": agreement})


if __name__ == "__main__":
    main()
