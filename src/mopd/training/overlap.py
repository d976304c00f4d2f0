"""Sample and score one step's batch, with teacher scoring hidden behind generation.

The step's prompts are generated in `sampling.overlap_chunks` consecutive chunks. As soon as
a chunk is generated, a worker thread verifies it and has the objective score it (MOPD: the
router sends each teacher its share of the chunk) while the main thread generates the next
chunk. The chunks' signals are stacked in batch order (`concat_signals`), so the update sees
the batch it would have seen from a serial step. An objective that needs the whole batch at
once (`rowwise = False`, GRPO) scores it after generation, as the serial step does.

Same numbers, overlapped or not. Chunk c of step s samples with a generator seeded from
(seed, s, c) in both paths (a one-chunk step keeps the serial loop's generator of (seed, s)),
so the chunking is part of what is sampled, like the seed, and the same chunks give the same
rollouts. The serial path (`overlap=False`) scores those same chunks after generation: a
teacher's log-prob for a row depends, at the level of float rounding (~1e-7), on the padded
width of the batch it came in, so scoring other batches would change the last bits.

Timing: `time/teacher` is the time the objective spent scoring (teacher busy time),
`time/teacher_exposed` the part of it after generation had finished (what the step waited
for), `time/teacher_hidden` the rest, hidden behind generation.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from mopd.domains.base import Example
from mopd.objectives.base import concat_signals
from mopd.rollout.types import Rollout, TokenBatch, collate
from mopd.rollout.sample import generate_rollouts, verify_rollouts
from mopd.training.run import OnPolicyRun


class Sampled(NamedTuple):
    rollouts: list[Rollout]
    batch: TokenBatch
    signals: dict[str, torch.Tensor]
    times: dict[str, float]  # time/rollout and the time/teacher* split (module docstring)


def step_generator(seed: int, step: int) -> torch.Generator:
    # Sampling randomness is a function of (seed, step) alone, so a resumed run draws
    # exactly what the uninterrupted run drew.
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def chunk_generator(seed: int, step: int, chunk: int, chunks: int) -> torch.Generator:
    """The sampling generator of one chunk of a step (module docstring: randomness)."""
    if chunks == 1:
        return step_generator(seed, step)
    state = np.random.SeedSequence([seed % 2**63, step, chunk]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def chunk_bounds(n: int, chunks: int) -> list[tuple[int, int]]:
    """`chunks` consecutive, near-equal, non-empty [start, end) ranges covering n items."""
    cuts = [round(c * n / chunks) for c in range(chunks + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def sample_and_score(run: OnPolicyRun, examples: list[Example], overlap: bool | None = None,
                     step: int | None = None) -> Sampled:
    """Rollouts of `examples`, their batch and signals. `overlap` None: overlap whenever it can.
    `step`: the step whose batch this is, for its sampling seeds (default: the current step)."""
    s = run.sampling
    step = run.step if step is None else step
    bounds = chunk_bounds(len(examples), s.overlap_chunks)
    rowwise = run.objective.rowwise
    if overlap is None:
        overlap = len(bounds) > 1 and rowwise
    domains = sorted(run.sampler.shares)
    busy: list[tuple[float, float]] = []  # (start, end) of each scoring call

    # On a GPU the worker's kernels go to a stream of their own, beside generation's (else both
    # threads queue on the one default stream); it is synchronised before its signals are used.
    stream = torch.cuda.Stream() if overlap and torch.cuda.is_available() else None

    def score(rollouts: list[Rollout]) -> tuple[TokenBatch, dict[str, torch.Tensor]]:
        verify_rollouts(rollouts, run.verifiers, run.verification)
        batch = collate(rollouts, run.tokenizer.pad_token_id, domains)
        t = time.perf_counter()
        with torch.cuda.stream(stream):  # None: a no-op
            signals = run.objective.score(rollouts, batch)
        if stream is not None:
            stream.synchronize()
        busy.append((t, time.perf_counter()))
        return batch, signals

    t0 = time.perf_counter()
    chunks: list[list[Rollout]] = []
    futures: list[Future] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mopd-score") if overlap else None
    try:
        with run.engine.awake():
            for c, (a, b) in enumerate(bounds):
                gen = chunk_generator(run.seed, step, c, len(bounds))
                chunks.append(generate_rollouts(run.engine, run.tokenizer, examples[a:b], s, gen, first_group=a))
                if pool is not None:
                    _raise_failed(futures)  # a teacher that failed on an earlier chunk stops the step now
                    futures.append(pool.submit(score, chunks[-1]))
        generated = time.perf_counter()
        rollouts = [r for chunk in chunks for r in chunk]
        if pool is not None:
            parts = [f.result() for f in futures]
        else:  # serial: the same scoring calls, after generation
            parts = [score(chunk) for chunk in chunks] if rowwise and len(chunks) > 1 else [score(rollouts)]
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    batch = parts[0][0] if len(parts) == 1 else collate(rollouts, run.tokenizer.pad_token_id, domains)
    signals = concat_signals([p[1] for p in parts], batch.input_ids.shape[1])
    return Sampled(rollouts, batch, signals, teacher_times(busy, t0, generated))


def _raise_failed(futures: list[Future]) -> None:
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()


def teacher_times(busy: list[tuple[float, float]], start: float, generated: float) -> dict[str, float]:
    """Generation wall time and the teacher busy / exposed / hidden split (module docstring)."""
    total = sum(e - b for b, e in busy)
    exposed = sum(max(0.0, e - max(b, generated)) for b, e in busy)
    hidden = total - exposed
    return {"time/rollout": generated - start, "time/teacher": total, "time/teacher_exposed": exposed,
            "time/teacher_hidden": hidden, "time/teacher_hidden_frac": hidden / total if total > 0 else 0.0}
