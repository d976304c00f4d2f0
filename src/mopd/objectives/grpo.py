"""The GRPO objective: group-normalised outcome rewards from the domain verifiers.

Used by the domain-teacher stage, Mix-RL and Cascade RL. Groups whose rewards are all equal
carry no signal and are dropped (DAPO dynamic sampling); the loss is normalised per kept token.
"""

from __future__ import annotations

import torch

from mopd.algorithms.grpo import dynamic_sampling_keep, group_advantages
from mopd.models.logprobs import TokenLogprobs
from mopd.algorithms.mopd_loss import importance_weights, policy_gradient_loss
from mopd.config.schema import ISCorrection
from mopd.objectives.base import LossOutput, Objective, Totals
from mopd.rollout.types import Rollout, TokenBatch


class GRPOObjective(Objective):
    topk = 0
    rowwise = False  # dynamic sampling's kept-token count is a whole-batch number

    def __init__(self, is_correction: ISCorrection | None = None, dynamic_sampling: bool = True):
        self.is_correction = is_correction
        self.corrects_stale_samples = is_correction is not None
        self.dynamic_sampling = dynamic_sampling

    def score(self, rollouts: list[Rollout], batch: TokenBatch) -> dict[str, torch.Tensor]:
        missing = sorted({r.domain for r in rollouts if r.reward is None})
        if missing:
            raise ValueError(f"GRPO needs a verifier for domains {missing}")
        rewards = torch.tensor([float(r.reward) for r in rollouts])
        keep = (dynamic_sampling_keep(rewards, batch.groups) if self.dynamic_sampling
                else torch.ones_like(rewards, dtype=torch.bool))
        return {"advantage": group_advantages(rewards, batch.groups), "keep": keep}

    def loss_mask(self, batch: TokenBatch, signals: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch.gen_mask & signals["keep"][:, None]

    def loss(self, fwd: TokenLogprobs, batch: TokenBatch, signals: dict[str, torch.Tensor],
             totals: Totals) -> LossOutput:
        mask = batch.gen_mask & signals["keep"][:, None]
        c = self.is_correction
        w = importance_weights(fwd.logprobs, batch.sample_logprobs, c.eps_low if c else None,
                               c.eps_high if c else None)
        adv = signals["advantage"][:, None].expand_as(fwd.logprobs)
        # Token-level normalisation over the kept tokens of the whole batch, all ranks (DAPO).
        loss = policy_gradient_loss(fwd.logprobs, adv, w, mask, "token", num_tokens=totals.num_tokens)
        metrics = {"masked": ((w == 0) & batch.gen_mask).float(), "kept": mask.float()}
        if fwd.entropy is not None:
            metrics["entropy"] = fwd.entropy
        return LossOutput(loss, metrics, active_tokens=int(((w != 0) & mask).sum()))
