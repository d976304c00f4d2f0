"""The on-policy loop shared by every RL-style stage: sample -> score -> advantage -> update.

A stage is an `Objective` (how rollouts are scored and turned into a loss) plus the prompts
its sampler draws; everything else here is the same for MOPD, GRPO, Mix-RL and Cascade RL.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mopd.config.schema import CheckpointConfig, LoggingConfig, OptimConfig, SamplingConfig
from mopd.data.mixture import MixtureSampler
from mopd.objectives.base import Objective
from mopd.rollout.engine import RolloutEngine
from mopd.rollout.types import collate
from mopd.teachers.base import TeacherError
from mopd.training import checkpoint as ckpt
from mopd.training.interrupt import StopOnSignal, TrainingInterrupted
from mopd.training.metrics import MetricsLogger, per_domain_means, per_domain_row_means
from mopd.training.progress import StepProgress
from mopd.training.rollouts import Verifier, collect_rollouts
from mopd.training.update import NonFiniteUpdate, update_step

log = logging.getLogger(__name__)


@dataclass
class OnPolicyRun:
    model: torch.nn.Module
    tokenizer: object
    engine: RolloutEngine
    sampler: MixtureSampler
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampling: SamplingConfig
    optim: OptimConfig
    output_dir: Path
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    verifiers: dict[str, Verifier] = field(default_factory=dict)
    seed: int = 0
    name: str = "mopd"
    run_config: dict = field(default_factory=dict)
    step: int = 0  # steps completed
    skipped_nonfinite: int = 0  # updates skipped for a non-finite loss or gradient, in all


def step_generator(seed: int, step: int) -> torch.Generator:
    # Sampling randomness is a function of (seed, step) alone, so a resumed run draws
    # exactly what the uninterrupted run drew.
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def resume_from(run: OnPolicyRun, path: Path) -> None:
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(path, dtype=next(run.model.parameters()).dtype)
    run.model.load_state_dict(saved.state_dict())
    state = ckpt.load_trainer_state(path)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["sampler"])
    ckpt.set_rng_state(state["rng"])
    run.step = state["step"]
    run.skipped_nonfinite = state.get("skipped_nonfinite", 0)
    log.info("resumed %s from %s at step %d", run.name, path, run.step)


def save(run: OnPolicyRun) -> Path:
    return ckpt.save_checkpoint(run.output_dir / "checkpoints", run.step, run.model, run.tokenizer,
                                run.optimizer, run.scheduler, {"sampler": run.sampler.state_dict(),
                                                               "skipped_nonfinite": run.skipped_nonfinite},
                                keep=run.checkpoint.keep)


def train_one_step(run: OnPolicyRun) -> dict[str, float]:
    s = run.sampling
    torch.manual_seed(run.seed * 1_000_003 + run.step)
    t0 = time.perf_counter()
    examples = run.sampler.next_batch(s.prompts_per_step)
    rollouts = collect_rollouts(run.engine, run.tokenizer, examples, s, run.verifiers,
                                step_generator(run.seed, run.step))
    t1 = time.perf_counter()  # sample
    batch = collate(rollouts, run.tokenizer.pad_token_id, sorted(run.sampler.shares))
    signals = run.objective.score(rollouts, batch)
    t2 = time.perf_counter()  # score
    scalars, tok = update_step(run.model, run.optimizer, run.scheduler, batch, signals, run.objective,
                               run.optim.grad_accum_steps, run.optim.grad_clip, s.temperature)
    run.engine.sync_weights(run.model)
    t3 = time.perf_counter()  # advantage + update

    n_tokens = int(batch.gen_mask.sum())
    m = dict(scalars)
    for k, v in tok.items():
        m.update(per_domain_means(v, batch.gen_mask, batch.domain_ids, batch.domains, k))
    lengths = batch.gen_mask.sum(-1).float()
    m.update(per_domain_row_means(lengths, batch.domain_ids, batch.domains, "length"))
    rewards = torch.tensor([r.reward if r.reward is not None else float("nan") for r in rollouts])
    m.update(per_domain_row_means(rewards, batch.domain_ids, batch.domains, "reward"))
    m.update({"time/rollout": t1 - t0, "time/teacher": t2 - t1, "time/update": t3 - t2,
              "tokens_per_s": n_tokens / max(t3 - t0, 1e-9), "completion_tokens": n_tokens,
              "sequences": len(rollouts)})
    return m


class NonFiniteRun(RuntimeError):
    """Too many non-finite updates in a row: the run is diverging, not unlucky."""


def run_onpolicy(run: OnPolicyRun, resume: bool = False, stop_at: int | None = None) -> dict[str, float]:
    """Train until `run.optim.steps` (or `stop_at`, for staged runs); returns the last step's metrics.

    Faults end in a checkpoint or a clear error, never in silently wrong training: a teacher
    error stops the run after saving the state from before the failed step; SIGINT/SIGTERM
    save after the current step and raise TrainingInterrupted; a non-finite update is skipped
    and counted, and `optim.max_nonfinite_in_a_row` of them in a row stop the run.
    """
    run.output_dir.mkdir(parents=True, exist_ok=True)
    if resume and (path := ckpt.latest_checkpoint(run.output_dir / "checkpoints")) is not None:
        resume_from(run, path)
    logger = MetricsLogger(run.output_dir, run.logging, run.run_config)
    last: dict[str, float] = {}
    bad_in_a_row, limit = 0, run.optim.max_nonfinite_in_a_row
    try:
        with StepProgress(run.name, run.optim.steps, run.step, enabled=run.logging.progress) as bar, \
                StopOnSignal() as stop:
            end = min(run.optim.steps, stop_at or run.optim.steps)
            while run.step < end:
                drawn = run.sampler.state_dict()
                try:
                    last = train_one_step(run)
                    bad_in_a_row = 0
                except NonFiniteUpdate as e:
                    bad_in_a_row += 1
                    run.skipped_nonfinite += 1
                    log.warning("step %d: skipped a non-finite update (%s); %d in a row, %d in all",
                                run.step, e, bad_in_a_row, run.skipped_nonfinite)
                    last = {"nonfinite_in_a_row": float(bad_in_a_row)}
                    if bad_in_a_row >= limit:
                        raise NonFiniteRun(
                            f"{bad_in_a_row} non-finite updates in a row (optim.max_nonfinite_in_a_row="
                            f"{limit}), last: {e}; lower optim.lr, set optim.grad_clip, or check the "
                            "teachers' log-probs") from e
                except TeacherError:
                    # Nothing of the failed step was applied: put its prompts back and save, so a
                    # resumed run redoes exactly this step once the teacher is back.
                    run.sampler.load_state_dict(drawn)
                    log.error("step %d: teacher failed; saved %s", run.step, save(run))
                    raise
                last["skipped_nonfinite"] = float(run.skipped_nonfinite)
                run.step += 1
                if run.step % run.logging.every == 0 or run.step == run.optim.steps:
                    logger.log(run.step, last)
                bar.advance(last)
                saved = run.checkpoint.every and run.step % run.checkpoint.every == 0
                if saved:
                    save(run)
                if stop.signum is not None and run.step < run.optim.steps:  # a finished run just ends
                    raise TrainingInterrupted(stop.signum, run.step, ckpt.latest_checkpoint(
                        run.output_dir / "checkpoints") if saved else save(run))
        if not (run.checkpoint.every and run.step % run.checkpoint.every == 0):
            save(run)
    finally:
        logger.close()
    return last
