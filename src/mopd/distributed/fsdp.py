"""FSDP2 specifics: rollouts from sharded parameters, and whole-model checkpoints.

FSDP2 (`torch.distributed.fsdp.fully_shard`, prepared by accelerate) keeps each rank's shard
of every parameter and all-gathers a layer's parameters around its forward. Two parts of mopd
need the whole model instead:
- sampling: ranks stop generating at different steps, so per-forward all-gathers would not
  line up across ranks; the parameters are gathered once, stay whole while sampling, and are
  sharded again afterwards (the memory of one full copy during rollouts, as DeepSpeed's
  "gather for generation" does);
- checkpoints: a Hugging Face directory holds the full weights, and `trainer_state.pt` the full
  optimizer state, keyed by parameter name; every rank loads them back into its shards.
"""

from __future__ import annotations

from mopd.distributed.rank_views import inner_optimizer
from mopd.rollout.engine import RolloutEngine


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


class GatheredRollouts(RolloutEngine):
    """A rollout engine whose `generate` runs with the FSDP2 student's parameters whole.

    `reshard_after_forward` is the run's FSDP2 setting, restored on the FSDP modules after
    sampling. Everything else is the wrapped engine's.
    """

    def __init__(self, engine: RolloutEngine, model, reshard_after_forward: bool = True):
        self.engine, self.model, self.reshard_after_forward = engine, model, reshard_after_forward
        self.shares_trainer_weights = engine.shares_trainer_weights

    def generate(self, *args, **kwargs):
        modules = _fsdp_modules(self.model)
        for m in modules:
            m.set_reshard_after_forward(False, recurse=False)
        try:
            for m in modules:
                m.unshard()  # a collective every rank makes once, whatever it samples
            return self.engine.generate(*args, **kwargs)
        finally:
            for m in modules:
                m.reshard()
                m.set_reshard_after_forward(self.reshard_after_forward, recurse=False)
            if modules and modules[0] is self.model:
                # The root stays whole after its forward, as FSDP2 keeps it by default: the
                # training step applies its output head to the hidden states after the forward.
                self.model.set_reshard_after_forward(False, recurse=False)

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)

    def awake(self):
        return self.engine.awake()

    def defer_weights(self, model) -> None:
        self.engine.defer_weights(model)

    def ready(self) -> None:
        self.engine.ready()

    def close(self) -> None:
        self.engine.close()


class _FullModel:
    """The student with its gathered state dict: `save_pretrained` writes the whole model."""

    def __init__(self, model, state: dict):
        self._model, self._state = model, state

    def save_pretrained(self, directory, **kwargs):
        self._model.save_pretrained(directory, state_dict=self._state, **kwargs)

    def state_dict(self):
        return self._state

    def __getattr__(self, name):
        return getattr(self._model, name)


class _FullOptimizer:
    def __init__(self, state: dict):
        self._state = state

    def state_dict(self):
        return self._state


def full_model(accelerator, model) -> _FullModel:
    """Gather the full state dict (a collective: every rank calls it; rank 0 gets the tensors)."""
    return _FullModel(accelerator.unwrap_model(model), accelerator.get_state_dict(model))


def full_optimizer(model, optimizer) -> _FullOptimizer:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return _FullOptimizer(get_optimizer_state_dict(model, inner_optimizer(optimizer), options=options))


def load_full_model(model, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, inner_optimizer(optimizer), state,
                             options=StateDictOptions(full_state_dict=True))

