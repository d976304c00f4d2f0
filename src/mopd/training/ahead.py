"""One step ahead: the next step's batch is sampled and scored while this step's update runs.

With `sampling.ahead: 1` the update (forward, backward, optimiser step) runs on a worker
thread while the main thread generates the next step's rollouts and has the teachers score
them. A step then costs the longer of the two rather than their sum: on a 2-core CPU with one
torch thread on each side, a SmolLM2-135M step (8 x 32 tokens) took 3.1 s, against 4.0 s
strictly on-policy with both threads on each piece in turn (docs/benchmarks.md).

What it changes: the next batch is sampled with the weights from before this update, so each
batch is one update behind the student that trains on it (the usual "one-step off-policy"
pipeline). The loss's IS correction (`algorithm.is_correction`) weighs each token by
pi_student / pi_sampler, the same correction that already absorbs the rollout engine's
precision. Prompts and sampling seeds are those of the strictly on-policy run.

The engine must hold its own copy of the weights (vLLM): one that samples from the trainer's
parameters would see them change mid-generation. Generation stays on the main thread, where
in-process vLLM was started. A checkpoint saves the sampler as it was before the prefetched
batch was drawn, so a resumed run draws that batch again (sampled then from the saved weights).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from mopd.teachers.base import TeacherError
from mopd.training.overlap import Sampled, sample_and_score

if TYPE_CHECKING:
    from mopd.training.loop import OnPolicyRun

log = logging.getLogger(__name__)


@dataclass
class Prefetched:
    sampled: Sampled
    step: int  # the step whose batch this is
    sampler_state: dict  # the sampler before this batch was drawn: what a checkpoint keeps


def check_can_run_ahead(run: OnPolicyRun) -> None:
    """Fail before the first step when `sampling.ahead` cannot work with this run."""
    if not run.sampling.ahead:
        return
    if getattr(run.engine, "shares_trainer_weights", True):
        raise ValueError("sampling.ahead: 1 needs a rollout engine with its own copy of the weights "
                         "(rollout.engine: vllm); the 'hf' engine samples from the very parameters the "
                         "update is changing")
    if run.dist.world > 1:
        raise ValueError("sampling.ahead: 1 runs in a single training process for now; "
                         "use sampling.ahead: 0 with several processes")


def sampler_state_before_step(run: OnPolicyRun) -> dict:
    """The sampler as it was before the current step's batch was drawn (prefetched or not)."""
    pre = run.prefetched
    return pre.sampler_state if pre is not None else run.sampler.state_dict()


def take_prefetched(run: OnPolicyRun) -> Sampled | None:
    """This step's batch when the previous step sampled it; clears it either way."""
    pre, run.prefetched = run.prefetched, None
    return pre.sampled if pre is not None and pre.step == run.step else None


def update_while_sampling(run: OnPolicyRun, update: Callable[[Callable], tuple]) -> tuple[tuple, float]:
    """Run `update(wait_before_step)` on a worker thread while the main thread samples and scores step + 1.

    First the engine takes the weights the last step left pending (`defer_weights`), reading
    them while the update's forward and backward run; the update's optimiser step waits for that.

    Returns the update's result and how long the main thread then waited for it. The sampled
    batch lands in `run.prefetched`, also when the update raises (a skipped non-finite update
    leaves the weights, and so the batch, as they were). A teacher that fails on the next batch
    does not fail this step: the batch is dropped, its prompts put back, and the next step
    samples them again, where a lasting failure takes the loop's usual path.
    """
    ready = getattr(run.engine, "ready", None)
    threads = torch.get_num_threads()
    pushed = threading.Event()  # the engine has read the weights: the optimiser may change them

    def in_worker():
        if torch.get_num_threads() != threads:  # a new thread may start with the library default
            # (in-process vLLM on a CPU replaces set_num_threads by a no-op that logs a warning)
            torch.set_num_threads(threads)
        return update(pushed.wait)

    state = run.sampler.state_dict()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mopd-update") as pool:
        future = pool.submit(in_worker)
        try:
            if ready is not None:
                ready()  # the weights left pending by the last step go in while this forward/backward runs
            pushed.set()
            examples = run.sampler.next_batch(run.sampling.prompts_per_step)
            run.prefetched = Prefetched(sample_and_score(run, examples, step=run.step + 1), run.step + 1, state)
        except TeacherError as e:
            log.warning("step %d: a teacher failed on the next batch (%s); it is sampled again next step",
                        run.step + 1, e)
            run.sampler.load_state_dict(state)
        finally:
            pushed.set()  # also when the push failed: the update must not wait forever
            sampled_at = time.perf_counter()
            result = future.result()  # joins the update; re-raises what it raised
    return result, time.perf_counter() - sampled_at
