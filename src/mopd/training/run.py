"""What an on-policy run is made of: the student, its engine and sampler, an objective, settings.

A stage is an `Objective` (how rollouts are scored and turned into a loss) plus the prompts
its sampler draws; everything else here is the same for MOPD, GRPO, Mix-RL and Cascade RL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mopd.config.schema import CheckpointConfig, LoggingConfig, OptimConfig, SamplingConfig, VerifierConfig
from mopd.data.adaptive import MixtureAdapter
from mopd.data.mixture import MixtureSampler
from mopd.distributed.runtime import Local
from mopd.objectives.base import Objective
from mopd.rollout.engine import RolloutEngine
from mopd.verifiers.safe_reward import Verifier


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
    verification: VerifierConfig = field(default_factory=VerifierConfig)  # the config's `verifier` section
    seed: int = 0  # this process's sampling seed: `dist.rank_seed` of the config's seed (rank 0: the same)
    name: str = "mopd"
    run_config: dict = field(default_factory=dict)
    # Device, processes, mixed precision (mopd.distributed.runtime); default: this process alone.
    dist: Local = field(default_factory=Local)
    step: int = 0  # steps completed
    skipped_nonfinite: int = 0  # updates skipped for a non-finite loss or gradient, in all
    skipped_empty: int = 0  # updates skipped because no token had a learning signal, in all
    mixture: MixtureAdapter | None = None  # adaptive domain shares (sampling.mixture); None: fixed
