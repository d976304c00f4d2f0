"""One training step: sample and score -> update -> push weights -> metrics.

`train_one_step` is the synchronous step, each batch sampled from the weights of the update
just before it. Its pieces are also what the run-ahead driver (mopd.training.ahead) arranges
differently; `run_onpolicy` (mopd.training.loop) picks the driver.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from mopd.training.episode_metrics import episode_metrics
from mopd.training.metrics import per_domain_means, per_domain_row_means
from mopd.training.overlap import Sampled, sample_and_score
from mopd.training.run import OnPolicyRun
from mopd.training.update import update_step

Scalars = dict[str, float]  # loss, grad_norm, lr, skipped_empty...
TokenMetrics = dict[str, torch.Tensor]  # per-token diagnostics [B, T], averaged per domain into the metrics


def train_one_step(run: OnPolicyRun) -> dict[str, float]:
    """One synchronous step; returns its metrics. `run.step` is the loop's to advance."""
    seed_step(run)
    start = time.perf_counter()
    sampled = sample_batch(run)
    sampled_at = time.perf_counter()
    scalars, tok = update(run, sampled)
    push_weights(run)
    return step_metrics(run, sampled, scalars, tok, sampled.times, (start, sampled_at, time.perf_counter()))


class Lockstep:
    """The synchronous driver: every step samples its own batch, then updates (sampling.ahead: 0)."""

    def __init__(self, run: OnPolicyRun):
        self.run = run

    def step(self, last: bool) -> dict[str, float]:
        """One step; `last` (nothing to sample after it) changes nothing here."""
        return train_one_step(self.run)

    def sampler_state(self) -> dict:
        """The sampler as it was before the current step's batch was drawn: what a checkpoint keeps."""
        return self.run.sampler.state_dict()


def seed_step(run: OnPolicyRun) -> None:
    # Randomness outside sampling (dropout, ...) is a function of (seed, step), as sampling's is.
    torch.manual_seed(run.seed * 1_000_003 + run.step)


def sample_batch(run: OnPolicyRun, step: int | None = None) -> Sampled:
    """The next prompts, generated, verified and scored as the batch of `step` (default: this
    step), for its sampling seeds. Teachers score finished chunks while later ones generate
    (sampling.overlap_chunks > 1)."""
    return sample_and_score(run, run.sampler.next_batch(run.sampling.prompts_per_step), step=step)


def update(run: OnPolicyRun, sampled: Sampled,
           wait_before_step: Callable[[], object] | None = None) -> tuple[Scalars, TokenMetrics]:
    """One optimiser step on the sampled batch (mopd.training.update); `wait_before_step` is
    called before the optimiser changes the weights."""
    return update_step(run.model, run.optimizer, run.scheduler, sampled.batch, sampled.signals, run.objective,
                       run.optim.grad_accum_steps, run.optim.grad_clip, run.sampling.temperature, run.dist,
                       wait_before_step=wait_before_step, micro_batch_tokens=run.optim.micro_batch_tokens)


def push_weights(run: OnPolicyRun) -> None:
    """The student's new weights into the rollout engine, before the next batch is sampled."""
    run.engine.sync_weights(run.dist.unwrap(run.model))


def step_metrics(run: OnPolicyRun, sampled: Sampled, scalars: Scalars, tok: TokenMetrics,
                 times: dict[str, float], marks: tuple[float, float, float]) -> dict[str, float]:
    """The step's metrics: the update's scalars, per-domain token and row means, episode counts,
    and timings. `marks`: when the step started, its batch was ready, and weights were pushed."""
    start, sampled_at, pushed_at = marks
    batch, rollouts = sampled.batch, sampled.rollouts
    n_tokens = int(batch.gen_mask.sum())
    m = dict(scalars)
    for k, v in tok.items():
        m.update(per_domain_means(v, batch.gen_mask, batch.domain_ids, batch.domains, k))
    lengths = batch.gen_mask.sum(-1).float()
    m.update(per_domain_row_means(lengths, batch.domain_ids, batch.domains, "length"))
    rewards = torch.tensor([r.reward if r.reward is not None else float("nan") for r in rollouts])
    m.update(per_domain_row_means(rewards, batch.domain_ids, batch.domains, "reward"))
    m.update(episode_metrics(rollouts, batch))  # agentic domains: turns, tool calls, faults
    m.update({**times, "time/update": pushed_at - sampled_at, "time/step": pushed_at - start,
              "tokens_per_s": n_tokens / max(pushed_at - start, 1e-9), "completion_tokens": n_tokens,
              "sequences": len(rollouts)})
    return m
