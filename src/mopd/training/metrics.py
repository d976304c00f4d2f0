"""Step metrics: per-domain aggregation, and sinks (JSONL always; TensorBoard, W&B on request)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mopd.config.schema import LoggingConfig


def per_domain_means(values: torch.Tensor, mask: torch.Tensor, domain_ids: torch.Tensor,
                     domains: list[str], prefix: str) -> dict[str, float]:
    """Mean of a per-token [B, T] tensor over masked tokens, overall and per domain.

    NaN entries are not counted (a metric that does not apply to some rows, such as the reverse
    KL to a teacher that only some domains use); a domain with no counted entry gets no key."""
    nan = torch.isnan(values)
    m = (mask.bool() & ~nan).float()
    values = torch.nan_to_num(values)
    out = {f"{prefix}/all": float((values * m).sum() / m.sum().clamp(min=1))}
    for i, d in enumerate(domains):
        rows = domain_ids == i
        if rows.any() and not nan[rows].all():
            mm = m[rows]
            out[f"{prefix}/{d}"] = float((values[rows] * mm).sum() / mm.sum().clamp(min=1))
    return out


def per_domain_row_means(values: torch.Tensor, domain_ids: torch.Tensor, domains: list[str],
                         prefix: str) -> dict[str, float]:
    """Mean of a per-sequence [B] tensor, overall and per domain (NaN rows ignored)."""
    out = {}
    ok = ~torch.isnan(values)
    if ok.any():
        out[f"{prefix}/all"] = float(values[ok].mean())
    for i, d in enumerate(domains):
        rows = (domain_ids == i) & ok
        if rows.any():
            out[f"{prefix}/{d}"] = float(values[rows].mean())
    return out


class MetricsLogger:
    def __init__(self, output_dir: str | Path, cfg: LoggingConfig, run_config: dict | None = None):
        self.cfg = cfg
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = (self.dir / "metrics.jsonl").open("a") if cfg.jsonl else None
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"))
        self.wandb = None
        if cfg.wandb:
            import wandb

            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(self.dir), config=run_config or {})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in metrics.items():
                if math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
