"""The on-policy loop shared by every RL-style stage: steps, checkpoints, faults, metrics.

What one step does is mopd.training.step (synchronous) or mopd.training.ahead (sampling the
next batch during the update); `run_onpolicy` picks the driver and runs it to the last step.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from mopd.models.loading import save_pretrained
from mopd.teachers.base import TeacherError
from mopd.training import checkpoint as ckpt
from mopd.training.ahead import RunAhead
from mopd.training.interrupt import StopOnSignal, TrainingInterrupted
from mopd.training.metrics import MetricsLogger
from mopd.training.progress import StepProgress
from mopd.training.run import OnPolicyRun
from mopd.training.step import Lockstep
from mopd.training.update import NonFiniteUpdate

log = logging.getLogger(__name__)


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


def save(run: OnPolicyRun, sampler_state: dict | None = None) -> Path:
    """Checkpoint: every rank gathers its part of the state, the main process writes, all wait.
    `sampler_state`: the sampler before the current step's batch was drawn, when a driver has
    drawn it already (sampling.ahead); default: the sampler as it is."""
    model, optimizer = run.dist.saveable(run.model, run.optimizer)
    sampler_state = run.sampler.state_dict() if sampler_state is None else sampler_state
    extra = {"sampler": sampler_state, "skipped_nonfinite": run.skipped_nonfinite,
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
    driver = pick_driver(run)
    # The newest checkpoint that passes its manifest: a damaged one is skipped with a warning.
    if resume and (path := ckpt.usable_checkpoint(run.output_dir / "checkpoints")) is not None:
        resume_from(run, path)
    main = run.dist.is_main  # metrics and progress come from the main process alone
    logger = MetricsLogger(run.output_dir, run.logging, run.run_config) if main else None
    last: dict[str, float] = {}
    streaks = Streaks()
    try:
        with StepProgress(run.name, run.optim.steps, run.step, enabled=run.logging.progress and main) as bar, \
                StopOnSignal() as stop:
            end = min(run.optim.steps, stop_at or run.optim.steps)
            while run.step < end:
                last = step_or_skip(run, driver, run.step + 1 >= end, streaks)
                count_step(run, last, streaks)
                if logger and (run.step % run.logging.every == 0 or run.step == run.optim.steps):
                    logger.log(run.step, last)
                bar.advance(last)
                checkpoint_or_stop(run, driver, streaks, stop.signum)
        if not (run.checkpoint.every and run.step % run.checkpoint.every == 0):
            save(run, driver.sampler_state())
    finally:
        if logger:
            logger.close()
    return last


def pick_driver(run: OnPolicyRun) -> Lockstep | RunAhead:
    """The synchronous driver, or with sampling.ahead the one that samples during the update
    (which fails here when this run cannot run ahead)."""
    return RunAhead(run) if run.sampling.ahead else Lockstep(run)


@dataclass
class Streaks:
    """Steps in a row that changed nothing: a non-finite update, or no token to learn from."""

    nonfinite: int = 0
    empty: int = 0


def step_or_skip(run: OnPolicyRun, driver: Lockstep | RunAhead, last: bool, streaks: Streaks) -> dict[str, float]:
    """The step's metrics (averaged over ranks). A non-finite update is skipped and counted;
    a teacher error puts the step's prompts back and saves before it propagates."""
    drawn = driver.sampler_state()
    limit = run.optim.max_nonfinite_in_a_row
    try:
        metrics = run.dist.mean_metrics(driver.step(last=last))
    except NonFiniteUpdate as e:
        streaks.nonfinite += 1
        run.skipped_nonfinite += 1
        log.warning("step %d: skipped a non-finite update (%s); %d in a row, %d in all",
                    run.step, e, streaks.nonfinite, run.skipped_nonfinite)
        if streaks.nonfinite >= limit:
            raise NonFiniteRun(
                f"{streaks.nonfinite} non-finite updates in a row (optim.max_nonfinite_in_a_row="
                f"{limit}), last: {e}; lower optim.lr, set optim.grad_clip, or check the "
                "teachers' log-probs") from e
        return {"nonfinite_in_a_row": float(streaks.nonfinite)}
    except TeacherError:
        after_teacher_failure(run, drawn)
        raise
    streaks.nonfinite = 0
    return metrics


def count_step(run: OnPolicyRun, last: dict[str, float], streaks: Streaks) -> None:
    """Count the finished step (skips, the step itself) and let the adaptive mixture see it."""
    empty = bool(last.get("skipped_empty"))
    run.skipped_empty += empty
    streaks.empty = streaks.empty + 1 if empty else 0
    last["skipped_nonfinite"] = float(run.skipped_nonfinite)
    last["skipped_empty"] = float(run.skipped_empty)
    run.step += 1
    if run.mixture is not None:
        last.update(run.mixture.after_step(run.step, last, run.sampler))


def checkpoint_or_stop(run: OnPolicyRun, driver: Lockstep | RunAhead, streaks: Streaks,
                       signum: int | None) -> None:
    """Save every `checkpoint.every` steps; stop, saved, when the run cannot learn or was signalled."""
    saved = run.checkpoint.every and run.step % run.checkpoint.every == 0
    if saved:
        save(run, driver.sampler_state())
    if run.optim.max_empty_in_a_row and streaks.empty >= run.optim.max_empty_in_a_row:
        if not saved:
            save(run, driver.sampler_state())  # so that --resume, with a setting changed, continues from here
        raise no_signal_error(run, streaks.empty)
    # Ranks may see the signal at different steps: all stop at the first one that does.
    # A finished run just ends.
    if run.dist.any(signum is not None) and run.step < run.optim.steps:
        raise TrainingInterrupted(signum or signal.SIGTERM, run.step, ckpt.latest_checkpoint(
            run.output_dir / "checkpoints") if saved else save(run, driver.sampler_state()))
