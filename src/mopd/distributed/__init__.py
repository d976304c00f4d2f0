"""Distributed training: devices, processes, DDP / FSDP2 / DeepSpeed wrappers, fp32 master weights."""
