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
from mopd.training import checkpoint as ckpt
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
    max_nonfinite_in_a_row: int = 3
    name: str = "mopd"
    run_config: dict = field(default_factory=dict)
    step: int = 0  # steps completed


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
    log.info("resumed %s from %s at step %d", run.name, path, run.step)


def save(run: OnPolicyRun) -> Path:
    return ckpt.save_checkpoint(run.output_dir / "checkpoints", run.step, run.model, run.tokenizer,
                                run.optimizer, run.scheduler, {"sampler": run.sampler.state_dict()},
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


def run_onpolicy(run: OnPolicyRun, resume: bool = False, stop_at: int | None = None) -> dict[str, float]:
    """Train until `run.optim.steps` (or `stop_at`, for staged runs); returns the last step's metrics."""
    run.output_dir.mkdir(parents=True, exist_ok=True)
    if resume and (path := ckpt.latest_checkpoint(run.output_dir / "checkpoints")) is not None:
        resume_from(run, path)
    logger = MetricsLogger(run.output_dir, run.logging, run.run_config)
    last: dict[str, float] = {}
    bad_in_a_row = 0
    try:
        with StepProgress(run.name, run.optim.steps, run.step, enabled=run.logging.progress) as bar:
            end = min(run.optim.steps, stop_at or run.optim.steps)
            while run.step < end:
                try:
                    last = train_one_step(run)
                    bad_in_a_row = 0
                except NonFiniteUpdate as e:
                    bad_in_a_row += 1
                    log.warning("step %d: skipped a non-finite update (%s)", run.step, e)
                    last = {"skipped_nonfinite": 1.0}
                    if bad_in_a_row >= run.max_nonfinite_in_a_row:
                        raise RuntimeError(f"{bad_in_a_row} non-finite updates in a row; stopping") from e
                run.step += 1
                if run.step % run.logging.every == 0 or run.step == run.optim.steps:
                    logger.log(run.step, last)
                bar.advance(last)
                if run.checkpoint.every and run.step % run.checkpoint.every == 0:
                    save(run)
        if not (run.checkpoint.every and run.step % run.checkpoint.every == 0):
            save(run)
    finally:
        logger.close()
    return last
