"""The MOPD objective: per-token reverse KL to the domain's teacher (DESIGN 1.1 / 1.2)."""

from __future__ import annotations

import torch

from mopd.algorithms.grpo import group_advantages
from mopd.algorithms.logprobs import TokenLogprobs
from mopd.algorithms.mopd_loss import (importance_weights, mopd_advantages, policy_gradient_loss,
                                       topk_reverse_kl_loss)
from mopd.config.schema import AlgorithmConfig
from mopd.objectives.base import LossOutput, Totals
from mopd.rollout.types import Rollout, TokenBatch
from mopd.teachers.router import TeacherRouter


class MOPDObjective:
    rowwise = True  # teacher log-probs per row; the outcome term per group (chunks keep groups whole)

    def __init__(self, router: TeacherRouter, algo: AlgorithmConfig):
        self.router = router
        self.algo = algo
        self.topk = algo.topk if algo.loss == "topk" else 0

    def score(self, rollouts: list[Rollout], batch: TokenBatch) -> dict[str, torch.Tensor]:
        scores = self.router.score(batch, topk=self.topk)
        signals = {"lp_teacher": scores.logprobs}
        if self.topk:
            signals["topk_ids"] = scores.topk_ids
            signals["topk_lp_teacher"] = scores.topk_logprobs
        if self.algo.alpha > 0:
            rewards = torch.tensor([r.reward if r.reward is not None else float("nan") for r in rollouts])
            if torch.isnan(rewards).any():
                raise ValueError("algorithm.alpha > 0 needs a verifier for every domain")
            signals["orm_advantage"] = group_advantages(rewards, batch.groups)
        return signals

    def loss_mask(self, batch: TokenBatch, signals: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch.gen_mask

    def loss(self, fwd: TokenLogprobs, batch: TokenBatch, signals: dict[str, torch.Tensor],
             totals: Totals) -> LossOutput:
        a = self.algo
        lp_pi, mask = fwd.logprobs, batch.gen_mask
        lp_t = signals["lp_teacher"]
        kl = (lp_pi.detach() - lp_t) * mask  # sampled-token estimate of KL(pi || T)
        is_on = a.is_correction is not None
        w = importance_weights(lp_pi, batch.sample_logprobs,
                               a.is_correction.eps_low if is_on else None,
                               a.is_correction.eps_high if is_on else None)
        norm = dict(normalization=a.normalization, num_sequences=totals.num_sequences,
                    num_tokens=totals.num_tokens)
        if a.loss == "topk":
            # The same IS weights as the sampled-token form: a token the sampler drew with a
            # probability far from the trained policy's counts as little here as there.
            loss = topk_reverse_kl_loss(fwd.target_logprobs, signals["topk_lp_teacher"], mask, weights=w, **norm)
            adv = torch.zeros_like(lp_pi)
        else:
            adv = mopd_advantages(lp_t, lp_pi, a.a_max)
        if a.alpha > 0:
            adv = adv + a.alpha * signals["orm_advantage"][:, None]
        if a.loss == "sampled" or a.alpha > 0:
            pg = policy_gradient_loss(lp_pi, adv, w, mask, **norm)
            loss = pg if a.loss == "sampled" else loss + pg
        metrics = {"reverse_kl": kl, "masked": ((w == 0) & mask).float(), "advantage": adv.detach() * mask}
        if fwd.entropy is not None:
            metrics["entropy"] = fwd.entropy
        return LossOutput(loss, metrics, active_tokens=int(((w != 0) & mask).sum()))
