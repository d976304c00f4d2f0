"""MOPDObjective.loss and the teachers' alignment, against slow, obvious references.

Each test here exists to fail on a plausible wiring mistake that the pure loss functions'
tests cannot see (tests/mutations.py applies them): the advantage's sign, the loss mask
taken from the attention mask (training on prompt tokens), the outcome term's sign, student
and teacher swapped in the top-k loss, and a one-position shift in a teacher's alignment.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mopd.models.logprobs import TokenLogprobs
from mopd.config.schema import AlgorithmConfig, ISCorrection
from mopd.objectives.base import Totals
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.types import Rollout, collate
from mopd.teachers.router import TeacherRouter

A_MAX, ALPHA, EPS = 0.8, 0.5, (0.7, 1.4)


def case(seed: int = 0, k: int = 3):
    """A batch with prompt tokens (attention on, gen_mask off), and every signal random and non-zero."""
    g = torch.Generator().manual_seed(seed)
    rollouts = [Rollout.from_completion("d", [4, 5, 6][:p], torch.randint(7, 30, (c,), generator=g).tolist(),
                                        (-torch.rand(c, generator=g) - 0.2).tolist(), group=grp)
                for p, c, grp in ((3, 4, 0), (2, 6, 0), (3, 2, 1), (1, 5, 1))]
    batch = collate(rollouts, 0)
    shape = batch.input_ids.shape
    lp_pi = (-torch.rand(shape, generator=g) - 0.1).requires_grad_()
    signals = {"lp_teacher": -torch.rand(shape, generator=g) * 2,
               "orm_advantage": torch.tensor([0.7, -0.7, 1.1, -1.1]),
               "topk_lp_teacher": torch.log_softmax(torch.randn((*shape, k), generator=g), -1),
               "topk_ids": torch.randint(0, 30, (*shape, k), generator=g)}
    student_topk = torch.log_softmax(torch.randn((*shape, k), generator=g), -1).requires_grad_()
    return batch, signals, lp_pi, student_topk


def reference_sampled(batch, sig, lp_pi, normalization):
    """The loss as the method writes it, one token at a time."""
    total, B = 0.0, batch.size
    n_tokens = int(batch.gen_mask.sum())
    for i in range(B):
        terms = []
        for t in range(batch.input_ids.shape[1]):
            if not batch.gen_mask[i, t]:
                continue
            a = min(max(float(sig["lp_teacher"][i, t]) - float(lp_pi.detach()[i, t]), -A_MAX), A_MAX)
            a += ALPHA * float(sig["orm_advantage"][i])
            rho = math.exp(float(lp_pi.detach()[i, t]) - float(batch.sample_logprobs[i, t]))
            w = rho if EPS[0] <= rho <= EPS[1] else 0.0
            terms.append(-w * a * lp_pi[i, t])
        total = total + (sum(terms) / len(terms) / B if normalization == "sequence" else sum(terms) / n_tokens)
    return total


def reference_topk(batch, sig, lp_pi, s_topk, normalization):
    total, B, n_tokens = 0.0, batch.size, int(batch.gen_mask.sum())
    for i in range(B):
        terms = []
        for t in range(batch.input_ids.shape[1]):
            if not batch.gen_mask[i, t]:
                continue
            rho = math.exp(float(lp_pi.detach()[i, t]) - float(batch.sample_logprobs[i, t]))
            w = rho if EPS[0] <= rho <= EPS[1] else 0.0
            kl = sum(s_topk[i, t, v].exp() * (s_topk[i, t, v] - sig["topk_lp_teacher"][i, t, v])
                     - s_topk[i, t, v].exp() + sig["topk_lp_teacher"][i, t, v].exp() for v in range(s_topk.shape[-1]))
            terms.append(w * kl)
        total = total + (sum(terms) / len(terms) / B if normalization == "sequence" else sum(terms) / n_tokens)
    return total


def objective(loss: str, normalization: str, alpha: float = ALPHA) -> MOPDObjective:
    algo = AlgorithmConfig(a_max=A_MAX, alpha=alpha, loss=loss, topk=3, normalization=normalization,
                           is_correction=ISCorrection(eps_low=EPS[0], eps_high=EPS[1]))
    return MOPDObjective(TeacherRouter({}, {}), algo)


@pytest.mark.parametrize("normalization", ["sequence", "token"])
def test_sampled_token_loss_and_gradient_equal_the_reference(normalization):
    batch, sig, lp_pi, _ = case()
    # The IS mask must drop some tokens and keep others, or its wiring would go untested.
    rho = torch.exp(lp_pi.detach() - batch.sample_logprobs)[batch.gen_mask]
    assert ((rho < EPS[0]) | (rho > EPS[1])).any() and ((rho >= EPS[0]) & (rho <= EPS[1])).any()
    totals = Totals(batch.size, int(batch.gen_mask.sum()))
    out = objective("sampled", normalization).loss(TokenLogprobs(lp_pi), batch, sig, totals)
    got_grad, = torch.autograd.grad(out.loss, lp_pi)
    ref = reference_sampled(batch, sig, lp_pi, normalization)
    ref_grad, = torch.autograd.grad(ref, lp_pi)
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(got_grad, ref_grad, atol=1e-7, rtol=1e-5)
    assert (got_grad[~batch.gen_mask] == 0).all()  # prompt and padding positions: no gradient


def test_advantage_metric_is_teacher_minus_student():
    batch, sig, lp_pi, _ = case(1)
    out = objective("sampled", "sequence", alpha=0.0).loss(TokenLogprobs(lp_pi), batch, sig,
                                                           Totals(batch.size, int(batch.gen_mask.sum())))
    m = batch.gen_mask
    want = (sig["lp_teacher"] - lp_pi.detach()).clamp(-A_MAX, A_MAX)
    torch.testing.assert_close(out.token_metrics["advantage"][m], want[m])
    torch.testing.assert_close(out.token_metrics["reverse_kl"][m], (lp_pi.detach() - sig["lp_teacher"])[m])


@pytest.mark.parametrize("normalization", ["sequence", "token"])
def test_topk_loss_and_gradient_equal_the_reference(normalization):
    batch, sig, lp_pi, s_topk = case(2)
    totals = Totals(batch.size, int(batch.gen_mask.sum()))
    fwd = TokenLogprobs(lp_pi, target_logprobs=s_topk)
    out = objective("topk", normalization, alpha=0.0).loss(fwd, batch, sig, totals)
    got_grad, = torch.autograd.grad(out.loss, s_topk)
    ref = reference_topk(batch, sig, lp_pi, s_topk, normalization)
    ref_grad, = torch.autograd.grad(ref, s_topk)
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(got_grad, ref_grad, atol=1e-7, rtol=1e-5)
    # The masked share is what the loss really dropped.
    rho = torch.exp(lp_pi.detach() - batch.sample_logprobs)
    dropped = ((rho < EPS[0]) | (rho > EPS[1])) & batch.gen_mask
    assert torch.equal(out.token_metrics["masked"].bool(), dropped) and dropped.any()
    assert out.active_tokens == int((batch.gen_mask & ~dropped).sum())


class FakeVLLM:
    """Stands in for vLLM's `LLM.generate` with prompt log-probs: entry t of a row scores token t
    given tokens < t, from a known function of (t, token), plus a top-k of made-up ids."""

    @staticmethod
    def logprob(t: int, tok: int) -> float:
        return -0.01 * t - 0.001 * tok

    def generate(self, prompts, params, use_tqdm=False):
        k = params.prompt_logprobs or 0
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            entries = [None]
            for t in range(1, len(ids)):
                e = {ids[t]: SimpleNamespace(logprob=self.logprob(t, ids[t]))}
                for j in range(k):
                    e.setdefault(1000 + j, SimpleNamespace(logprob=-0.001 * (j + 1)))
                entries.append(e)
            outs.append(SimpleNamespace(prompt_logprobs=entries))
        return outs


def test_vllm_teacher_aligns_each_log_prob_with_its_token():
    pytest.importorskip("vllm")
    from mopd.teachers.vllm_teacher import VLLMTeacher

    teacher = object.__new__(VLLMTeacher)  # no engine start: the alignment is what is tested
    teacher.name, teacher.llm, teacher.temperature = "t", FakeVLLM(), 1.0
    batch, *_ = case(3)
    got = teacher.score(batch).logprobs
    for i in range(batch.size):
        for t in range(batch.input_ids.shape[1]):
            want = FakeVLLM.logprob(t, int(batch.input_ids[i, t])) if batch.gen_mask[i, t] else 0.0
            assert float(got[i, t]) == pytest.approx(want, abs=1e-7), (i, t)
