"""Peak memory of per-token log-probs for a long completion: chunked versus plain.

Forward + backward of the sampled-token log-probs, with the entropy (as the training step
asks for it), of a 2048-token completion with
SmolLM2-135M's vocabulary (49,152) and width (576):
  - plain:   logits [B x T x V] -> log_softmax -> gather (what a trainer does by default)
  - chunked: mopd.models.logprobs.token_logprobs (output head + log-softmax on chunks
             of positions, each recomputed in the backward pass), once per `--chunk-sizes`
  - trunk:   the model's trunk alone (hidden states, no output head): the floor both share.

The model is SmolLM2-135M's config cut to `--layers` layers (random weights; memory does
not depend on weight values), so the head, whose memory is what differs, is the real size;
`--layers 30` is the whole model. Each variant runs in a fresh process, in turn (A B C A B C),
and its peak is the resident-set high-water mark (VmHWM, reset just before the step) minus
the resident set just before it: the memory the step itself added.

    python benchmarks/bench_logprob_memory.py [--tokens 2048] [--batch 1] [--layers 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import WORK_DIR, PeakRSS, median, print_table, write_json  # noqa: E402
from lockstep import run_in_turn  # noqa: E402

PROMPT = 32  # prompt tokens before the completion


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="completion tokens per row")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the SmolLM2-135M config (30: all)")
    p.add_argument("--chunk-sizes", default="default,256", help="token_logprobs chunk sizes to run, comma-separated "
                   "('default': the library's default)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def smollm2_config(layers: int):
    """SmolLM2-135M-Instruct's architecture (written out: no download, no GGUF read needed)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


def plain_logprobs(model, ids, attn, pos):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)  # noqa: F841 - computed, as the training step does
    lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(lp * pos[:, 1:], (1, 0))


def variant_loss(name, model, ids, attn, pos):
    from mopd.models.logprobs import token_logprobs

    if name == "trunk":  # the shared floor: hidden states only, a loss that touches every position
        return model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state.pow(2).mean()
    if name == "plain":
        lp = plain_logprobs(model, ids, attn, pos)
    else:  # "chunked" (the library's default chunk) or "chunked-N"
        kw = {"chunk_size": int(name.split("-")[1])} if "-" in name else {}
        lp = token_logprobs(model, ids, attn, pos, with_entropy=True, **kw).logprobs
    return -(lp * pos).sum() / pos.sum()


def entry(conn, args, name: str) -> None:
    from lockstep import serve

    torch.set_num_threads(args.threads)

    def setup():
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(smollm2_config(args.layers)).train()
        T = PROMPT + args.tokens
        ids = torch.randint(3, 49152, (args.batch, T))
        pos = torch.zeros_like(ids, dtype=torch.bool)
        pos[:, PROMPT:] = True
        return model, ids, torch.ones_like(ids), pos

    def step(state):
        model, ids, attn, pos = state
        model.zero_grad(set_to_none=True)
        mem = PeakRSS()
        before = mem.current()
        mem.reset()
        t = time.perf_counter()
        variant_loss(name, model, ids, attn, pos).backward()
        return {"extra_peak_mib": mem.peak() - before, "peak_mib": mem.peak(), "fwd_bwd_s": time.perf_counter() - t}

    serve(conn, setup, step)


def main(argv=None) -> dict:
    args = parse_args(argv)
    chunked = [c.strip() for c in args.chunk_sizes.split(",")]
    variants = [("chunked" if c == "default" else f"chunked-{int(c)}") for c in chunked] + ["plain", "trunk"]
    specs = {v: (entry, args, v) for v in variants}
    raw = run_in_turn(specs, warmup=0, steps=args.repeats)
    res = {v: {"extra_peak_mib": max(s["extra_peak_mib"] for s in raw[v]["steps"]),
               "fwd_bwd_s": median([s["fwd_bwd_s"] for s in raw[v]["steps"]]),
               "process_peak_mib": max(s["peak_mib"] for s in raw[v]["steps"])} for v in variants}
    floor = res["trunk"]["extra_peak_mib"]
    for v in variants:
        res[v]["above_trunk_mib"] = res[v]["extra_peak_mib"] - floor
    first = variants[0]
    ratio = res["plain"]["extra_peak_mib"] / res[first]["extra_peak_mib"]
    head_ratio = res["plain"]["above_trunk_mib"] / max(res[first]["above_trunk_mib"], 1.0)
    logits_mib = args.batch * args.tokens * 49152 * 4 / 2**20
    print_table(f"log-probs + entropy, forward + backward: {args.batch} x {args.tokens} completion tokens, vocab "
                f"49,152, {args.layers}-layer SmolLM2-135M (one fp32 [B x T x V] = {logits_mib:,.0f} MiB)",
                ["variant", "peak added by the step MiB", "of which above trunk MiB", "fwd+bwd s"],
                [[v, r["extra_peak_mib"], r["above_trunk_mib"], r["fwd_bwd_s"]] for v, r in res.items()])
    print(f"plain / {first} peak: {ratio:.2f}x (above the trunk: {head_ratio:.2f}x)")
    out = {"benchmark": "logprob_memory", "ratio_peak": ratio, "ratio_peak_above_trunk": head_ratio,
           "logits_tensor_mib": logits_mib, "settings": vars(args) | {"work_dir": str(args.work_dir),
                                                                       "out": str(args.out)},
           "results": res}
    write_json(args.out or args.work_dir / "logprob_memory.json", out)
    return out


if __name__ == "__main__":
    main()
