"""One step ahead: the next step's batch is sampled and scored while this step's update runs.

With `sampling.ahead: 1` the update (forward, backward, optimiser step) runs on a worker
thread while the main thread generates the next step's rollouts and has the teachers score
them. A step then costs the longer of the two rather than their sum (docs/benchmarks.md).

What it changes: the next batch is sampled with the weights from before this update, so each
batch is one update behind the student that trains on it (the usual "one-step off-policy"
pipeline). The loss's IS correction (`algorithm.is_correction`) weighs each token by
pi_student / pi_sampler, the same correction that already absorbs the rollout engine's
precision. Prompts and sampling seeds are those of the strictly on-policy run.

The engine must hold its own copy of the weights (vLLM): one that samples from the trainer's
parameters would see them change mid-generation. Generation stays on the main thread, where
in-process vLLM was started. A checkpoint saves the sampler as it was before the prefetched
batch was drawn, so a resumed run draws that batch again (sampled then from the saved weights).

`RunAhead` is a driver beside the synchronous one (mopd.training.step.Lockstep), made of the
same step pieces: sample_batch, update, push_weights, step_metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from mopd.config.ahead import ahead_problem
from mopd.teachers.base import TeacherError
from mopd.training.overlap import Sampled
from mopd.training.run import OnPolicyRun
from mopd.training.step import push_weights, sample_batch, seed_step, step_metrics, update

log = logging.getLogger(__name__)


@dataclass
class Prefetched:
    sampled: Sampled
    step: int  # the step whose batch this is
    sampler_state: dict  # the sampler before this batch was drawn: what a checkpoint keeps


def check_can_run_ahead(run: OnPolicyRun) -> None:
    """Fail before the first step when `sampling.ahead` cannot work with this run as built (the
    config's rules, mopd.config.ahead, with the built engine and the real process count)."""
    if run.sampling.ahead and (problem := ahead_problem(
            engine_shares_weights=run.engine.shares_trainer_weights, world=run.dist.world,
            is_correction=run.objective.corrects_stale_samples,
            mixture_mode=run.sampling.mixture.mode)):
        raise ValueError(problem)


class RunAhead:
    """The driver for sampling.ahead: 1. Holds the batch sampled for the next step."""

    def __init__(self, run: OnPolicyRun):
        check_can_run_ahead(run)
        self.run = run
        self.prefetched: Prefetched | None = None

    def step(self, last: bool) -> dict[str, float]:
        """One step; unless it is the `last`, the next step's batch is sampled during its update."""
        run = self.run
        seed_step(run)
        start = time.perf_counter()
        sampled = self.take_prefetched() or sample_batch(run)
        sampled_at = time.perf_counter()
        times = sampled.times
        if last:
            scalars, tok = update(run, sampled)
            push_weights(run)
        else:
            (scalars, tok), waited = self.update_while_sampling(sampled)
            times = {**times, "time/update_exposed": waited}
            # The push reads the new weights while the next update's forward and backward run.
            run.engine.defer_weights(run.dist.unwrap(run.model))
        return step_metrics(run, sampled, scalars, tok, times, (start, sampled_at, time.perf_counter()))

    def sampler_state(self) -> dict:
        """The sampler as it was before the current step's batch was drawn (prefetched or not)."""
        pre = self.prefetched
        return pre.sampler_state if pre is not None else self.run.sampler.state_dict()

    def take_prefetched(self) -> Sampled | None:
        """This step's batch when the previous step sampled it; clears it either way."""
        pre, self.prefetched = self.prefetched, None
        return pre.sampled if pre is not None and pre.step == self.run.step else None

    def update_while_sampling(self, sampled: Sampled) -> tuple[tuple, float]:
        """Update on a worker thread while the main thread samples and scores step + 1.

        First the engine takes the weights the last step left pending (`defer_weights`), reading
        them while the update's forward and backward run; the update's optimiser step waits for that.

        Returns the update's result and how long the main thread then waited for it. The sampled
        batch lands in `self.prefetched`, also when the update raises (a skipped non-finite update
        leaves the weights, and so the batch, as they were). A teacher that fails on the next batch
        does not fail this step: the batch is dropped, its prompts put back, and the next step
        samples them again, where a lasting failure takes the loop's usual path.
        """
        run = self.run
        threads = torch.get_num_threads()
        pushed = threading.Event()  # the engine has read the weights: the optimiser may change them

        def in_worker():
            if torch.get_num_threads() != threads:  # a new thread may start with the library default
                # (in-process vLLM on a CPU replaces set_num_threads by a no-op that logs a warning)
                torch.set_num_threads(threads)
            return update(run, sampled, wait_before_step=pushed.wait)

        state = run.sampler.state_dict()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mopd-update") as pool:
            future = pool.submit(in_worker)
            try:
                run.engine.ready()  # the weights left pending by the last step go in during this forward/backward
                pushed.set()
                self.prefetched = Prefetched(sample_batch(run, step=run.step + 1), run.step + 1, state)
            except TeacherError as e:
                log.warning("step %d: a teacher failed on the next batch (%s); it is sampled again next step",
                            run.step + 1, e)
                run.sampler.load_state_dict(state)
            finally:
                pushed.set()  # also when the push failed: the update must not wait forever
                sampled_at = time.perf_counter()
                result = future.result()  # joins the update; re-raises what it raised
        return result, time.perf_counter() - sampled_at
