"""The machine's limit for a training step: FLOPs per completion token and the measured matmul rate.

FLOPs of one completion token, counted as multiply-adds x 2 of the matrix products it passes
through (decoder-only transformer, `cfg` a Hugging Face config dict):

    matmul weights M = layers x (q + k + v + o projections + the MLP's gate, up and down)
                       + the output head (hidden x vocab; counted even when tied to the
                       embedding, whose lookup costs nothing)
    attention    A(c) = layers x 4 x heads x head_dim x c   (scores q.k and the weighted sum of v,
                       2 FLOPs per multiply-add each, at c attended positions)

    generation  2 M + A(c)        one forward of the student in the rollout engine
    teacher     2 M_t + A_t(c)    one forward of the teacher (full head: its log-softmax needs it)
    student     3 (2 M + A(c))    forward + backward (the backward costs twice the forward)

c is the mean context a completion token attends to: the prompt plus half the completion.
Not counted: the prompt's own positions (prefill, and the student's forward over them), norms,
rotary embeddings, softmax, the loss and the optimiser (elementwise, small against the matmuls).
For SmolLM2-135M (M = 134.5 M) with itself as teacher this is ~10 M = 1.35 GFLOP a token.

The limit is a large matrix product (`gemm_rate`) timed in the process that measures, with the
same torch thread count, in each dtype the setups compute in.
"""

from __future__ import annotations

import time

import torch


def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def matmul_weights(cfg: dict) -> int:
    """M: the weights of every matrix product a token passes through, output head included."""
    h, d = cfg["hidden_size"], head_dim(cfg)
    q = o = h * cfg["num_attention_heads"] * d
    kv = 2 * h * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * d
    mlp = 3 * h * cfg["intermediate_size"]
    return cfg["num_hidden_layers"] * (q + kv + o + mlp) + h * cfg["vocab_size"]


def attention_flops(cfg: dict, context: float) -> float:
    """A(c): scores and weighted sum over `context` positions, all layers and heads."""
    return cfg["num_hidden_layers"] * 4 * cfg["num_attention_heads"] * head_dim(cfg) * context


def flops_per_token(student: dict, context: float, teacher: dict | None = None) -> dict[str, float]:
    """FLOPs one completion token costs in an on-policy distillation step, by part and in total."""
    teacher = teacher or student
    fwd = 2 * matmul_weights(student) + attention_flops(student, context)
    parts = {"generation": fwd,
             "teacher": 2 * matmul_weights(teacher) + attention_flops(teacher, context),
             "student": 3 * fwd}
    return {**parts, "total": sum(parts.values())}


def mean_context(prompt_tokens: float, completion_tokens: float) -> float:
    """Mean positions a completion token attends to (causal): the prompt, then on average
    half the completion (token t of n sees t of them, t = 1..n: (n + 1) / 2)."""
    return prompt_tokens + (completion_tokens + 1) / 2


def share_of_limit(tokens_per_s: float, flops_per_tok: float, peak_flops_per_s: float) -> dict[str, float]:
    """Achieved FLOP/s of a setup and its share of the measured peak."""
    achieved = tokens_per_s * flops_per_tok
    return {"achieved_flops_per_s": achieved, "peak_flops_per_s": peak_flops_per_s,
            "share": achieved / peak_flops_per_s if peak_flops_per_s > 0 else float("nan")}


def gemm_rate(dtype: torch.dtype, threads: int, n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of an n x n x n matrix product in `dtype` on `threads` torch threads: best of `reps`
    (the least disturbed by other work on the machine), after one unmeasured product."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
        torch.mm(a, b)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        return 2 * n**3 / best
    finally:
        torch.set_num_threads(before)
