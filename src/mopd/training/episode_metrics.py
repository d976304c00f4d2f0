"""Per-domain metrics of agentic episodes: turns, tool calls and the faults that were absorbed."""

from __future__ import annotations

import torch

from mopd.rollout.types import Rollout, TokenBatch
from mopd.training.metrics import per_domain_row_means

# metric name -> what of an episode's EpisodeStats it averages
EPISODE_METRICS = {
    "turns": lambda s: s.turns,
    "tool_calls": lambda s: s.tool_calls,
    "tool_parse_errors": lambda s: s.parse_errors,
    "tool_errors": lambda s: s.tool_errors,
    "env_errors": lambda s: s.env_errors,
    "episode_finished": lambda s: float(s.end == "done"),
}


def episode_metrics(rollouts: list[Rollout], batch: TokenBatch) -> dict[str, float]:
    """Means per episode, per agentic domain and over all episodes; nothing for single-turn batches."""
    if not any(r.episode is not None for r in rollouts):
        return {}
    out = {}
    for name, get in EPISODE_METRICS.items():
        # NaN rows (single-turn rollouts) are left out of the means.
        values = torch.tensor([float(get(r.episode)) if r.episode is not None else float("nan") for r in rollouts])
        out.update(per_domain_row_means(values, batch.domain_ids, batch.domains, name))
    return out
