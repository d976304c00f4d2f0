"""The MOPD objective: per-token reverse KL to the domain's teacher(s) (docs/method.md)."""

from __future__ import annotations

import torch

from mopd.algorithms.grpo import group_advantages
from mopd.algorithms.spans import span_sums
from mopd.models.logprobs import TokenLogprobs
from mopd.algorithms.mopd_loss import (importance_weights, mixture_advantages, mopd_advantages,
                                       policy_gradient_loss, topk_reverse_kl_loss)
from mopd.config.schema import AlgorithmConfig
from mopd.objectives.base import LossOutput, Objective, Totals
from mopd.rollout.types import Rollout, TokenBatch
from mopd.teachers.router import TeacherRouter


class MOPDObjective(Objective):
    rowwise = True  # teacher log-probs per row; the outcome term per group (chunks keep groups whole)

    def __init__(self, router: TeacherRouter, algo: AlgorithmConfig):
        self.router = router
        self.algo = algo
        self.topk = algo.topk if algo.loss == "topk" else 0
        self.corrects_stale_samples = algo.is_correction is not None
        if self.topk and router.spans:
            cross = sorted(n for n, t in router.teachers.items() if t.cross_tokenizer)
            raise ValueError(f"algorithm.loss: topk needs the student's vocabulary, but teachers {cross} have "
                             "another tokenizer (teachers[].cross_tokenizer); use algorithm.loss: sampled")

    def score(self, rollouts: list[Rollout], batch: TokenBatch) -> dict[str, torch.Tensor]:
        signals = self._teacher_signals(batch)
        if self.algo.alpha > 0:
            rewards = torch.tensor([r.reward if r.reward is not None else float("nan") for r in rollouts])
            if torch.isnan(rewards).any():
                raise ValueError("algorithm.alpha > 0 needs a verifier for every domain")
            signals["orm_advantage"] = group_advantages(rewards, batch.groups)
        return signals

    def _teacher_signals(self, batch: TokenBatch) -> dict[str, torch.Tensor]:
        """Single-teacher routing: [B, T] log-probs. A mixture: [B, T, M] per teacher slot, with the
        slot weights per token (per-token tensors are what chunking pads and micro-batches slice)."""
        if not self.router.mixes:
            s = self.router.score(batch, topk=self.topk)
            out = {"lp_teacher": s.logprobs}
            if self.topk:
                out.update(topk_ids=s.topk_ids, topk_lp_teacher=s.topk_logprobs)
            if self.router.spans:
                out.update(span_start=s.span_start, span_end=s.span_end)
            return out
        mix = self.router.score_slots(batch, topk=self.topk)
        T = batch.input_ids.shape[1]
        out = {"lp_teacher": torch.stack([s.logprobs for s in mix.slots], -1),
               "teacher_weight": mix.weights[:, None, :].expand(-1, T, -1).contiguous()}
        if self.topk:
            out.update(topk_ids=torch.cat([s.topk_ids for s in mix.slots], -1),
                       topk_lp_teacher=torch.cat([s.topk_logprobs for s in mix.slots], -1))
        if self.router.spans:
            out.update(span_start=torch.stack([s.span_start for s in mix.slots], -1),
                       span_end=torch.stack([s.span_end for s in mix.slots], -1))
        return out

    def loss_mask(self, batch: TokenBatch, signals: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch.gen_mask

    def loss(self, fwd: TokenLogprobs, batch: TokenBatch, signals: dict[str, torch.Tensor],
             totals: Totals) -> LossOutput:
        a = self.algo
        lp_pi, mask = fwd.logprobs, batch.gen_mask
        lp_t = signals["lp_teacher"]
        slot_w = signals.get("teacher_weight")  # a mixture: [B, T, M]
        # Sampled-token estimate of KL(pi || T); for a mixture, to its weighted geometric mean.
        kl = (lp_pi.detach() - (lp_t if slot_w is None else (slot_w * lp_t).sum(-1))) * mask
        lp_pi_cmp, gap = self._on_spans(lp_pi.detach(), lp_t, signals)
        if "span_start" in signals:  # a span's log-ratio, shared by its tokens (one-token spans as they were)
            multi = signals["span_start"] != signals["span_end"]
            multi = multi if slot_w is None else multi.any(-1)
            kl = torch.where(multi, (gap if slot_w is None else (slot_w * gap).sum(-1)) * mask, kl)
        is_on = a.is_correction is not None
        w = importance_weights(lp_pi, batch.sample_logprobs,
                               a.is_correction.eps_low if is_on else None,
                               a.is_correction.eps_high if is_on else None)
        norm = dict(normalization=a.normalization, num_sequences=totals.num_sequences,
                    num_tokens=totals.num_tokens)
        if a.loss == "topk":
            # The same IS weights as the sampled-token form: a token the sampler drew with a
            # probability far from the trained policy's counts as little here as there.
            loss = topk_reverse_kl_loss(fwd.target_logprobs, signals["topk_lp_teacher"], mask, weights=w,
                                        slot_weights=slot_w, **norm)
            adv = torch.zeros_like(lp_pi)
        elif slot_w is None:
            adv = mopd_advantages(lp_t, lp_pi_cmp, a.a_max)
        elif "span_start" in signals:  # each teacher's spans: the student's span sums per slot
            adv = (slot_w * mopd_advantages(lp_t, lp_pi_cmp, a.a_max)).sum(-1)
        else:
            adv = mixture_advantages(lp_t, slot_w, lp_pi, a.a_max)
        if a.alpha > 0:
            adv = adv + a.alpha * signals["orm_advantage"][:, None]
        if a.loss == "sampled" or a.alpha > 0:
            pg = policy_gradient_loss(lp_pi, adv, w, mask, **norm)
            loss = pg if a.loss == "sampled" else loss + pg
        metrics = {"reverse_kl": kl, "masked": ((w == 0) & mask).float(), "advantage": adv.detach() * mask}
        if fwd.entropy is not None:
            metrics["entropy"] = fwd.entropy
        if slot_w is not None:
            metrics.update(self._kl_to_each_teacher(gap, batch))
        return LossOutput(loss, metrics, active_tokens=int(((w != 0) & mask).sum()))

    @staticmethod
    def _on_spans(lp_pi: torch.Tensor, lp_t: torch.Tensor, signals: dict[str, torch.Tensor]):
        """(the student's log-prob to compare with lp_t, the per-token log-ratio lp_pi - lp_T).

        With a teacher of another tokenizer, lp_t is the teacher's log-prob of each token's whole
        span: the student's is the sum over the span's columns, and the ratio is shared out
        evenly over the span's tokens so that a completion's token sum is its log-ratio
        (docs/cross_tokenizer.md). Without, both are per token, as they always were."""
        if "span_start" not in signals:
            return lp_pi, (lp_pi[..., None] - lp_t) if lp_t.dim() == 3 else lp_pi - lp_t
        start, end = signals["span_start"], signals["span_end"]
        lp_span = span_sums(lp_pi, start, end)
        return lp_span, (lp_span - lp_t) / (end - start + 1)

    def _kl_to_each_teacher(self, gap: torch.Tensor, batch: TokenBatch) -> dict:
        """`reverse_kl_to/<teacher>`: per token, NaN on rows whose domain does not use that teacher."""
        out: dict[str, torch.Tensor] = {}
        for row, d in enumerate(batch.domain_ids.tolist()):
            for slot, (name, _) in enumerate(self.router.route(batch.domains[d])):
                m = out.setdefault(f"reverse_kl_to/{name}", torch.full_like(gap[..., 0], float("nan")))
                m[row] = gap[row, :, slot] * batch.gen_mask[row]
        return out
