"""The on-policy loop shared by every RL-style stage: sample -> score -> advantage -> update.

A stage is an `Objective` (how rollouts are scored and turned into a loss) plus the prompts
its sampler draws; everything else here is the same for MOPD, GRPO, Mix-RL and Cascade RL.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mopd.config.schema import CheckpointConfig, LoggingConfig, OptimConfig, SamplingConfig
from mopd.data.adaptive import MixtureAdapter
from mopd.data.mixture import MixtureSampler
from mopd.models.loading import save_pretrained
from mopd.objectives.base import Objective
from mopd.rollout.engine import RolloutEngine
from mopd.teachers.base import TeacherError
from mopd.training import checkpoint as ckpt
from mopd.training.ahead import (Prefetched, check_can_run_ahead, sampler_state_before_step, take_prefetched,
                                 update_while_sampling)
from mopd.distributed.runtime import Local
from mopd.training.episode_metrics import episode_metrics
from mopd.training.interrupt import StopOnSignal, TrainingInterrupted
from mopd.training.metrics import MetricsLogger, per_domain_means, per_domain_row_means
from mopd.training.progress import StepProgress
from mopd.training.overlap import sample_and_score
from mopd.rollout.sample import Verifier
from mopd.training.update import NonFiniteUpdate, update_step

log = logging.getLogger(__name__)


@dataclass
class OnPolicyRun:
    model: torch.nn.Module  # as prepared by `dist` (a DDP / FSDP2 / DeepSpeed wrapper across processes)
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
    seed: int = 0  # this process's sampling seed: `dist.rank_seed` of the config's seed (rank 0: the same)
    name: str = "mopd"
    run_config: dict = field(default_factory=dict)
    # Device, processes, mixed precision (mopd.distributed.runtime); default: this process alone.
    dist: Local = field(default_factory=Local)
    step: int = 0  # steps completed
    skipped_nonfinite: int = 0  # updates skipped for a non-finite loss or gradient, in all
    skipped_empty: int = 0  # updates skipped because no token had a learning signal, in all
    prefetched: Prefetched | None = None  # the next step's batch, sampled ahead (sampling.ahead)
    mixture: MixtureAdapter | None = None  # adaptive domain shares (sampling.mixture); None: fixed


def step_generator(seed: int, step: int) -> torch.Generator:
    # Sampling randomness is a function of (seed, step) alone, so a resumed run draws
    # exactly what the uninterrupted run drew.
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def resume_from(run: OnPolicyRun, path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from mopd.models.lora import is_adapter_dir, load_adapter_state

    # Every rank reads the same checkpoint (output_dir must be on storage that all ranks see).
    if is_adapter_dir(path):  # a LoRA student's checkpoint holds its adapter alone
        load_adapter_state(run.dist.unwrap(run.model), path)
    else:
        saved = AutoModelForCausalLM.from_pretrained(path, dtype=next(run.model.parameters()).dtype)
        run.dist.load_model_state(run.model, saved.state_dict())
    state = ckpt.load_trainer_state(path)
    run.dist.load_optimizer_state(run.model, run.optimizer, state["optimizer"])
    run.dist.load_scaler_state(state.get("grad_scaler"))
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["sampler"])
    ckpt.set_rng_state(state["rng"])
    run.step = state["step"]
    run.skipped_nonfinite = state.get("skipped_nonfinite", 0)
    run.skipped_empty = state.get("skipped_empty", 0)
    if run.mixture is not None:
        run.mixture.load_state_dict(state.get("mixture", {}))
    log.info("resumed %s from %s at step %d", run.name, path, run.step)


def save(run: OnPolicyRun) -> Path:
    """Checkpoint: every rank gathers its part of the state, the main process writes, all wait."""
    model, optimizer = run.dist.saveable(run.model, run.optimizer)
    extra = {"sampler": sampler_state_before_step(run), "skipped_nonfinite": run.skipped_nonfinite,
             "skipped_empty": run.skipped_empty}
    if (scaler := run.dist.scaler_state()) is not None:
        extra["grad_scaler"] = scaler
    if run.mixture is not None:
        extra["mixture"] = run.mixture.state_dict()
    root = run.output_dir / "checkpoints"
    path = ckpt.save_checkpoint(root, run.step, model, run.tokenizer, optimizer, run.scheduler, extra,
                                keep=run.checkpoint.keep) if run.dist.is_main else None
    run.dist.barrier()
    return path or ckpt.latest_checkpoint(root)


def save_model(run: OnPolicyRun, directory: Path) -> None:
    """The trained student as a Hugging Face directory (written by the main process); a LoRA
    student's is its adapter, with the base model it belongs to (`mopd merge-lora` merges them)."""
    model, _ = run.dist.saveable(run.model, run.optimizer)
    if run.dist.is_main:
        save_pretrained(model, run.tokenizer, directory)
        if (spec := run.run_config.get("student")) and spec.get("lora") is not None:
            from mopd.config.schema import ModelSpec
            from mopd.models.lora import save_base_spec

            save_base_spec(directory, ModelSpec(**{k: v for k, v in spec.items() if k != "lora"}))
    run.dist.barrier()


def push_weights(run: OnPolicyRun, later: bool = False) -> None:
    """The student's new weights into the rollout engine. `later` (sampling.ahead): an engine that
    can defer the push takes them while the next update's forward and backward run."""
    model = run.dist.unwrap(run.model)
    defer = getattr(run.engine, "defer_weights", None) if later else None
    (defer or run.engine.sync_weights)(model)


def train_one_step(run: OnPolicyRun, prefetch_next: bool = False) -> dict[str, float]:
    """One step. `prefetch_next` (with `sampling.ahead`): sample the next step's batch during this update."""
    s = run.sampling
    torch.manual_seed(run.seed * 1_000_003 + run.step)
    t0 = time.perf_counter()
    sampled = take_prefetched(run)
    if sampled is None:
        # Teachers score finished chunks while later ones generate (sampling.overlap_chunks > 1).
        sampled = sample_and_score(run, run.sampler.next_batch(s.prompts_per_step))
    rollouts, batch, signals, times = sampled
    t2 = time.perf_counter()  # sample + score

    def update(wait_before_step=None):
        return update_step(run.model, run.optimizer, run.scheduler, batch, signals, run.objective,
                           run.optim.grad_accum_steps, run.optim.grad_clip, s.temperature, run.dist,
                           wait_before_step=wait_before_step)

    ahead = bool(s.ahead and prefetch_next)
    if ahead:
        (scalars, tok), waited = update_while_sampling(run, update)
        times = {**times, "time/update_exposed": waited}
    else:
        scalars, tok = update()
    push_weights(run, later=ahead)
    t3 = time.perf_counter()  # advantage + update

    n_tokens = int(batch.gen_mask.sum())
    m = dict(scalars)
    for k, v in tok.items():
        m.update(per_domain_means(v, batch.gen_mask, batch.domain_ids, batch.domains, k))
    lengths = batch.gen_mask.sum(-1).float()
    m.update(per_domain_row_means(lengths, batch.domain_ids, batch.domains, "length"))
    rewards = torch.tensor([r.reward if r.reward is not None else float("nan") for r in rollouts])
    m.update(per_domain_row_means(rewards, batch.domain_ids, batch.domains, "reward"))
    m.update(episode_metrics(rollouts, batch))  # agentic domains: turns, tool calls, faults
    m.update({**times, "time/update": t3 - t2, "time/step": t3 - t0,
              "tokens_per_s": n_tokens / max(t3 - t0, 1e-9), "completion_tokens": n_tokens,
              "sequences": len(rollouts)})
    return m


def after_teacher_failure(run: OnPolicyRun, drawn: dict) -> None:
    """Nothing of the failed step was applied: put its prompts back and save, so a resumed run
    redoes exactly this step once the teacher is back."""
    run.sampler.load_state_dict(drawn)
    if run.dist.world == 1:
        log.error("step %d: teacher failed; saved %s", run.step, save(run))
    else:  # the other ranks are mid-step: a collective save would never complete
        log.error("step %d: teacher failed on rank %d; --resume continues from the last checkpoint",
                  run.step, run.dist.rank)


class NonFiniteRun(RuntimeError):
    """Too many non-finite updates in a row: the run is diverging, not unlucky."""


class NoLearningSignal(RuntimeError):
    """Too many steps in a row where no token carried a learning signal: the run cannot learn."""


def no_signal_error(run: OnPolicyRun, in_a_row: int) -> NoLearningSignal:
    return NoLearningSignal(
        f"{run.name}: {in_a_row} steps in a row had no token to learn from (optim.max_empty_in_a_row="
        f"{run.optim.max_empty_in_a_row}): every GRPO group had equal rewards (usually all 0: the starting "
        "model never solves the domain) or every token fell outside the IS bounds. Train the init longer "
        "(sft.steps), make the domain easier, sample more per prompt (rollouts_per_prompt), widen "
        "algorithm.is_correction, or set max_empty_in_a_row: null to go on anyway")


def run_onpolicy(run: OnPolicyRun, resume: bool = False, stop_at: int | None = None) -> dict[str, float]:
    """Train until `run.optim.steps` (or `stop_at`, for staged runs); returns the last step's metrics.

    Faults end in a checkpoint or a clear error, never in silently wrong training: a teacher
    error stops the run after saving the state from before the failed step; SIGINT/SIGTERM
    save after the current step and raise TrainingInterrupted; a non-finite update is skipped
    and counted, and `optim.max_nonfinite_in_a_row` of them in a row stop the run.
    """
    run.output_dir.mkdir(parents=True, exist_ok=True)
    check_can_run_ahead(run)
    # The newest checkpoint that passes its manifest: a damaged one is skipped with a warning.
    if resume and (path := ckpt.usable_checkpoint(run.output_dir / "checkpoints")) is not None:
        resume_from(run, path)
    main = run.dist.is_main  # metrics and progress come from the main process alone
    logger = MetricsLogger(run.output_dir, run.logging, run.run_config) if main else None
    last: dict[str, float] = {}
    bad_in_a_row, limit = 0, run.optim.max_nonfinite_in_a_row
    empty_in_a_row = 0
    try:
        with StepProgress(run.name, run.optim.steps, run.step, enabled=run.logging.progress and main) as bar, \
                StopOnSignal() as stop:
            end = min(run.optim.steps, stop_at or run.optim.steps)
            while run.step < end:
                drawn = sampler_state_before_step(run)
                try:
                    last = run.dist.mean_metrics(train_one_step(run, prefetch_next=run.step + 1 < end))
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
                    after_teacher_failure(run, drawn)
                    raise
                empty = bool(last.get("skipped_empty"))
                run.skipped_empty += empty
                empty_in_a_row = empty_in_a_row + 1 if empty else 0
                last["skipped_nonfinite"] = float(run.skipped_nonfinite)
                last["skipped_empty"] = float(run.skipped_empty)
                run.step += 1
                if run.mixture is not None:
                    last.update(run.mixture.after_step(run.step, last, run.sampler))
                if logger and (run.step % run.logging.every == 0 or run.step == run.optim.steps):
                    logger.log(run.step, last)
                bar.advance(last)
                saved = run.checkpoint.every and run.step % run.checkpoint.every == 0
                if saved:
                    save(run)
                if run.optim.max_empty_in_a_row and empty_in_a_row >= run.optim.max_empty_in_a_row:
                    if not saved:
                        save(run)  # so that --resume, with a setting changed, continues from here
                    raise no_signal_error(run, empty_in_a_row)
                # Ranks may see the signal at different steps: all stop at the first one that does.
                # A finished run just ends.
                if run.dist.any(stop.signum is not None) and run.step < run.optim.steps:
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, run.step, ckpt.latest_checkpoint(
                        run.output_dir / "checkpoints") if saved else save(run))
        if not (run.checkpoint.every and run.step % run.checkpoint.every == 0):
            save(run)
    finally:
        if logger:
            logger.close()
    return last
