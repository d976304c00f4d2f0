"""Adaptive domain mixtures: the per-step domain weights, recomputed every K steps from what the
run measures (the two remedies Open-MOPD, arXiv 2608.19098, reports for plain MOPD).

- `tokens`: a token-balanced mixture. Each domain's share of *trained tokens* follows its
  configured weight: its prompt share is w_d / L_d (L_d its mean completion length, measured),
  normalised, so a long-answer domain no longer takes most of the gradient.
- `gap`: more of each step to domains further from their teacher: prompt share proportional to
  w_d * g_d, with g_d the domain's per-token reverse KL to its teacher (MOPD), measured.
Both use exponential moving averages of the per-domain metrics, and keep every domain at
`min_share` at least so that none is starved of the measurements that would bring it back.
The weights are logged (`mixture_weight/<domain>`) and checkpointed with the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SIGNAL = {"tokens": "length", "gap": "reverse_kl"}  # the per-domain metric each mode reads


@dataclass
class MixtureAdapter:
    mode: str  # "tokens" | "gap"
    every: int
    base: dict[str, float]  # the configured weights
    min_share: float = 0.05
    decay: float = 0.7  # EMA of the per-domain signal
    ema: dict[str, float] = field(default_factory=dict)

    def observe(self, metrics: dict[str, float]) -> None:
        prefix = SIGNAL[self.mode] + "/"
        for d in self.base:
            v = metrics.get(prefix + d)
            if v is None or v != v:  # a domain absent from this step, or NaN
                continue
            self.ema[d] = v if d not in self.ema else self.decay * self.ema[d] + (1 - self.decay) * v

    def weights(self) -> dict[str, float] | None:
        """The new shares, or None until every domain has been measured."""
        if any(d not in self.ema for d in self.base if self.base[d] > 0):
            return None
        if self.mode == "tokens":
            raw = {d: w / max(self.ema.get(d, 1.0), 1.0) for d, w in self.base.items()}
        else:
            raw = {d: w * max(self.ema.get(d, 0.0), 1e-6) for d, w in self.base.items()}
        live = {d: v for d, v in raw.items() if self.base[d] > 0}
        total = sum(live.values())
        n = len(live)
        floor = min(self.min_share, 1.0 / n)
        return {d: floor + (1 - n * floor) * v / total for d, v in live.items()}

    def after_step(self, step: int, metrics: dict[str, float], sampler) -> dict[str, float]:
        """Observe this step's metrics; every `every` steps set the sampler's shares. Returns the
        shares in force, for the metrics."""
        self.observe(metrics)
        if step % self.every == 0 and (new := self.weights()) is not None:
            sampler.set_shares(new)
        return {f"mixture_weight/{d}": w for d, w in sampler.shares.items()}

    def state_dict(self) -> dict:
        return {"ema": dict(self.ema)}

    def load_state_dict(self, state: dict) -> None:
        self.ema = dict(state.get("ema", {}))


def mixture_adapter(mixture, weights: dict[str, float]) -> MixtureAdapter | None:
    """The adapter of a `sampling.mixture` config section over the configured domain weights."""
    if mixture.mode == "fixed":
        return None
    return MixtureAdapter(mixture.mode, mixture.every, dict(weights), mixture.min_share)
