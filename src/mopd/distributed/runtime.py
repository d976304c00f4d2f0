"""Devices and processes: the same training step on a CPU, one GPU, or many processes.

`Local` is one process with the model where it is and plain torch calls (the pipeline's
stages, `mopd check`). `Accelerated` routes the same calls through an `accelerate.Accelerator`
built from the config's `distributed` section, so DDP, FSDP2 and DeepSpeed ZeRO-2 are a
launcher choice (`accelerate launch --config_file ...`, see docs/distributed.md). In a single
process it computes bit for bit what `Local` computes.

How a step is split across ranks:
- prompts: every rank draws the same global batch of `sampling.prompts_per_step` prompts from
  the same seeded mixture and keeps every world-th one (`RankShard`). Ranks sample different
  prompts, the mixture holds over the whole batch, and the sampler state is the same on every
  rank, so the one that rank 0 checkpoints resumes them all;
- sampling randomness: rank r seeds its generators with `rank_seed(seed)`, a function of
  (seed, rank), and the loop adds the step, so a resumed run draws what it drew before;
- gradients: each rank's loss is its sum over the sequence / token counts of all ranks divided
  by the number of ranks (`all_sum`, training.update.global_totals); DDP / FSDP2 / DeepSpeed
  average the gradients at the last micro-batch, which is then exactly the whole batch's gradient,
  however unevenly tokens fall on the ranks.
"""

from __future__ import annotations

import contextlib
import math

import torch

from mopd.config.schema import DistributedConfig
# Re-exported: what a backend refuses, and what one rank sees, live in their own modules.
from mopd.distributed.backend_checks import _warn_if_launch_setting_dropped, check_engines, check_precision  # noqa: F401,E501
from mopd.distributed.rank_views import RankShard, ThroughWrapper


# Metrics that add up over ranks; every other one is averaged.
SUMMED_METRICS = ("completion_tokens", "sequences", "tokens_per_s")


class Local:
    """One process, no accelerate: the model stays where it is (`device` is only a default)."""

    rank, world, is_main = 0, 1, True
    device = torch.device("cpu")
    has_loss_scaler = False
    keeps_master_weights = False  # the backend keeps float32 copies of 16-bit weights itself
    fsdp2 = deepspeed = False  # which wrapper shards or steps the model (Accelerated sets them)

    def prepare(self, model, optimizer, scheduler):
        return model, optimizer, scheduler

    def unwrap(self, model):
        return model

    def trainable(self, model):
        """What the training forward runs (an adapter when the model is wrapped for several ranks)."""
        return model

    def autocast(self):
        return contextlib.nullcontext()

    def micro_batch(self, model, last: bool):
        """Context of one micro-batch's forward and backward; only the last one syncs gradients."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, model, max_norm: float | None) -> float | None:
        params = [p for p in model.parameters() if p.requires_grad]
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf")))

    def all_finite(self, value: float) -> bool:
        return math.isfinite(value)

    def any(self, flag: bool) -> bool:
        return flag

    def all_sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (one collective for all of them)."""
        return list(values)

    def all_max(self, value: int) -> int:
        """The largest of the ranks' values."""
        return value

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return metrics

    def barrier(self) -> None: ...

    def rank_seed(self, seed: int) -> int:
        return seed + self.rank * 1_000_003  # rank 0 keeps the config's seed

    def shard(self, sampler, prompts_per_step: int):
        return sampler

    def rollout_engine(self, engine, model):
        return engine

    def saveable(self, model, optimizer):
        """(model, optimizer) whose `save_pretrained` / `state_dict` write the whole state."""
        return model, optimizer

    def load_model_state(self, model, state: dict) -> None:
        model.load_state_dict(state)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def scaler_state(self) -> dict | None:
        return None

    def load_scaler_state(self, state: dict | None) -> None: ...


class Accelerated(Local):
    """One process of a run launched by accelerate / torchrun (or started alone)."""

    def __init__(self, accelerator):
        from accelerate.utils import DistributedType

        self.acc = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process
        self.device = accelerator.device
        self.has_loss_scaler = accelerator.scaler is not None
        self.kind = accelerator.distributed_type
        self.deepspeed = self.kind == DistributedType.DEEPSPEED
        self.fsdp2 = bool(accelerator.is_fsdp2)
        if self.kind == DistributedType.FSDP and not self.fsdp2:
            raise ValueError("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config "
                             "(examples/accelerate/fsdp2.yaml)")
        self.wrapped = self.kind != DistributedType.NO
        self.keeps_master_weights = self.deepspeed or self.fsdp2
        if self.is_main:
            _warn_if_launch_setting_dropped(self.kind)

    @classmethod
    def from_config(cls, cfg: DistributedConfig) -> "Accelerated":
        return cls(build_accelerator(cfg))

    def prepare(self, model, optimizer, scheduler):
        if self.deepspeed:
            plugin = self.acc.state.deepspeed_plugin
            if plugin.zero_stage >= 3:
                raise ValueError("DeepSpeed ZeRO-3 shards the parameters the rollouts sample from; use ZeRO-2 "
                                 "(examples/accelerate/zero2.yaml) or FSDP2 (examples/accelerate/fsdp2.yaml)")
            if plugin.is_auto("train_micro_batch_size_per_gpu"):
                # mopd feeds its own micro-batches; DeepSpeed only uses this number in its logs.
                plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
        return self.acc.prepare(model, optimizer, scheduler)

    def unwrap(self, model):
        return self.acc.unwrap_model(model)

    def trainable(self, model):
        if not self.wrapped:
            return model
        # FSDP2 frees gathered parameters on its own schedule: its output head must run inside
        # the forward (full logits, memory batch x length x vocab per micro-batch).
        return ThroughWrapper(model, self.unwrap(model), head_outside=not self.fsdp2)

    def autocast(self):
        return self.acc.autocast()

    @contextlib.contextmanager
    def micro_batch(self, model, last: bool):
        if last:
            yield
            return
        with self.acc.no_sync(model):
            if self.deepspeed:  # DeepSpeed steps at its accumulation boundary: only after the last one
                self.acc.gradient_state._set_sync_gradients(False)
            try:
                yield
            finally:
                if self.deepspeed:
                    self.acc.gradient_state._set_sync_gradients(True)

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def clip_grad_norm(self, model, max_norm: float | None) -> float | None:
        norm = self.acc.clip_grad_norm_(model.parameters(), max_norm if max_norm else float("inf"))
        return None if norm is None else float(norm)  # None: DeepSpeed clips inside its own step

    def all_finite(self, value: float) -> bool:
        total = self.acc.reduce(torch.tensor([value], dtype=torch.float64, device=self.device), "sum")
        return math.isfinite(float(total))

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        return float(self.acc.reduce(torch.tensor([float(flag)], device=self.device), "sum")) > 0

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        total = self.acc.reduce(torch.tensor(values, dtype=torch.float64, device=self.device), "sum")
        return [float(v) for v in total]

    def all_max(self, value: int) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t)

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return metrics
        from accelerate.utils import gather_object

        return combine_metrics(gather_object([metrics]))

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    def shard(self, sampler, prompts_per_step: int):
        if self.world == 1:
            return sampler
        if prompts_per_step % self.world:
            raise ValueError(f"sampling.prompts_per_step={prompts_per_step} must be a multiple of the "
                             f"number of processes ({self.world}), so every rank trains on as many rows")
        return RankShard(sampler, self.rank, self.world)

    def rollout_engine(self, engine, model):
        if not self.fsdp2:
            return engine
        from mopd.distributed.fsdp import GatheredRollouts

        return GatheredRollouts(engine, model, self.acc.state.fsdp_plugin.reshard_after_forward is not False)

    def saveable(self, model, optimizer):
        if not self.fsdp2:
            return self.unwrap(model), optimizer
        from mopd.distributed import fsdp

        return fsdp.full_model(self.acc, model), fsdp.full_optimizer(model, optimizer)

    def load_model_state(self, model, state: dict) -> None:
        if self.fsdp2:
            from mopd.distributed import fsdp

            return fsdp.load_full_model(model, state)
        self.unwrap(model).load_state_dict(state)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        if self.fsdp2:
            from mopd.distributed import fsdp

            return fsdp.load_full_optimizer(model, optimizer, state)
        optimizer.load_state_dict(state)

    def scaler_state(self) -> dict | None:
        return self.acc.scaler.state_dict() if self.acc.scaler is not None else None

    def load_scaler_state(self, state: dict | None) -> None:
        if state is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(state)


def build_accelerator(cfg: DistributedConfig):
    """An Accelerator for `cfg`; the launcher (its env vars) decides processes, DDP / FSDP / DeepSpeed."""
    from accelerate import Accelerator

    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        raise ValueError("distributed.device is 'cuda' but torch sees no GPU "
                         "(torch.cuda.is_available() is False); use 'auto' or 'cpu'")
    cpu = cfg.device == "cpu" or not has_cuda
    if cpu and cfg.mixed_precision == "fp16":
        raise ValueError("distributed.mixed_precision 'fp16' needs a GPU and none is used here; "
                         "use 'bf16' or 'no'")
    _fresh_state_if_alone(cpu, cfg.mixed_precision)
    # The scheduler steps once per optimizer step: prompts_per_step is already the global batch.
    return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, step_scheduler_with_optimizer=False)


def _fresh_state_if_alone(cpu: bool, mixed_precision: str) -> None:
    """accelerate keeps one state per process and refuses (or ignores) other settings later. A
    single process that builds runs with other settings (tests, notebooks) gets a fresh state;
    a launched process keeps its own, which holds the process group."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if not state or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if state.get("_mixed_precision") != mixed_precision or (state["device"].type == "cpu") != cpu:
        AcceleratorState._reset_state(reset_partial_state=True)


def combine_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Sum the counts, average the rest over the ranks that reported each key (a per-domain
    metric only exists on the ranks that sampled that domain)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for m in per_rank for k in m):
        values = [m[key] for m in per_rank if key in m]
        out[key] = float(sum(values)) if key in SUMMED_METRICS else float(sum(values) / len(values))
    return out
