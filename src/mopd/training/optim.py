"""AdamW with an LR schedule (warmup, then constant / linear / cosine decay)."""

from __future__ import annotations

import torch
from transformers import get_scheduler

from mopd.config.schema import OptimConfig
from mopd.distributed.master_weights import MasterWeightsAdamW, wants_master_weights


def build_optimizer(model, cfg: OptimConfig, own_master_weights: bool = False):
    """AdamW (over float32 master copies for a 16-bit student, see mopd.distributed.master_weights)
    and its schedule. `own_master_weights`: the distributed backend keeps its own (DeepSpeed, FSDP2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    # The fused kernel is several times faster than the per-tensor loop on a CPU (benchmarks/profile_step.py)
    # and exists for floating-point tensors on CPU and CUDA (DTensor shards of FSDP2 included).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    master = wants_master_weights(params, cfg.master_weights, own_master_weights)
    opt = (MasterWeightsAdamW if master else torch.optim.AdamW)(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.schedule]
    sched = get_scheduler(name, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    return opt, sched
