"""The MOPD losses against slow references written token by token, the way docs/method.md writes them."""

import math

import pytest
import torch

from mopd.algorithms.mopd_loss import (importance_weights, mopd_advantages, normalise, policy_gradient_loss,
                                       topk_reverse_kl_loss)


def random_case(B=4, T=7, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lp_pi = -torch.rand(B, T, generator=g) * 4
    lp_t = -torch.rand(B, T, generator=g) * 12  # far enough to hit the clip
    lp_mu = lp_pi + (torch.rand(B, T, generator=g) - 0.5) * 2  # rho in [e^-1, e^1]
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = False
    mask[0] = False
    mask[0, 3] = True  # a one-token sequence
    return lp_pi, lp_t, lp_mu, mask


def reference_sampled_loss(lp_pi, lp_t, lp_mu, mask, a_max, eps_low, eps_high, normalization, orm=None, alpha=0.0):
    B, T = lp_pi.shape
    per_seq, all_tokens, n_tokens = [], 0.0, 0
    for b in range(B):
        total, n = 0.0, 0
        for t in range(T):
            if not mask[b, t]:
                continue
            a = min(max(float(lp_t[b, t]) - float(lp_pi[b, t]), -a_max), a_max)
            if orm is not None:
                a += alpha * float(orm[b])
            rho = math.exp(float(lp_pi[b, t]) - float(lp_mu[b, t]))
            if eps_low is None and eps_high is None:
                w = 1.0  # correction off
            else:
                w = rho if (eps_low is None or rho >= eps_low) and (eps_high is None or rho <= eps_high) else 0.0
            total += -w * a * float(lp_pi[b, t])
            n += 1
        per_seq.append(total / max(n, 1))
        all_tokens += total
        n_tokens += n
    if normalization == "sequence":
        return sum(per_seq) / B
    return all_tokens / n_tokens


@pytest.mark.parametrize("normalization", ["sequence", "token"])
@pytest.mark.parametrize("bounds", [(0.5, 2.0), (0.8, 1.25), (None, None)])
def test_sampled_loss_matches_reference(normalization, bounds):
    lp_pi, lp_t, lp_mu, mask = random_case()
    adv = mopd_advantages(lp_t, lp_pi, 5.0)
    w = importance_weights(lp_pi, lp_mu, *bounds)
    got = policy_gradient_loss(lp_pi, adv, w, mask, normalization)
    want = reference_sampled_loss(lp_pi, lp_t, lp_mu, mask, 5.0, *bounds, normalization)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_outcome_term_adds_alpha_times_group_advantage():
    lp_pi, lp_t, lp_mu, mask = random_case(seed=3)
    orm = torch.tensor([0.5, -1.0, 2.0, 0.0])
    adv = mopd_advantages(lp_t, lp_pi, 5.0) + 0.3 * orm[:, None]
    got = policy_gradient_loss(lp_pi, adv, importance_weights(lp_pi, lp_mu, 0.5, 2.0), mask)
    want = reference_sampled_loss(lp_pi, lp_t, lp_mu, mask, 5.0, 0.5, 2.0, "sequence", orm, 0.3)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_advantage_is_clipped_and_carries_no_gradient():
    lp_pi = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    lp_t = torch.tensor([[-20.0, -2.5, 9.0]])
    adv = mopd_advantages(lp_t, lp_pi, 5.0)
    assert adv.tolist() == [[-5.0, pytest.approx(-0.5), 5.0]]
    assert not adv.requires_grad


def test_gradient_is_minus_weight_times_advantage_over_length():
    lp_pi, lp_t, lp_mu, mask = random_case(seed=1)
    lp_pi = lp_pi.clone().requires_grad_(True)
    adv = mopd_advantages(lp_t, lp_pi, 5.0)
    w = importance_weights(lp_pi, lp_mu, 0.5, 2.0)
    policy_gradient_loss(lp_pi, adv, w, mask, "sequence").backward()
    lengths = mask.sum(-1, keepdim=True).clamp(min=1)
    expected = -(w * adv * mask) / lengths / lp_pi.shape[0]
    torch.testing.assert_close(lp_pi.grad, expected)


def test_importance_mask_drops_tokens_outside_bounds():
    lp_pi = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    lp_mu = torch.log(torch.tensor([[0.5, 0.1, 0.9]]))  # rho = 1, 5, 0.56
    w = importance_weights(lp_pi, lp_mu, 0.6, 2.0)
    assert w.tolist()[0][0] == pytest.approx(1.0)
    assert w.tolist()[0][1] == 0.0 and w.tolist()[0][2] == 0.0


def test_micro_batches_add_up_to_the_full_batch_loss():
    lp_pi, lp_t, lp_mu, mask = random_case(B=6, seed=2)
    adv = mopd_advantages(lp_t, lp_pi, 5.0)
    w = importance_weights(lp_pi, lp_mu, 0.5, 2.0)
    for norm in ("sequence", "token"):
        full = policy_gradient_loss(lp_pi, adv, w, mask, norm)
        parts = sum(policy_gradient_loss(lp_pi[r], adv[r], w[r], mask[r], norm, num_sequences=6,
                                         num_tokens=int(mask.sum())) for r in ([0, 1], [2, 3, 4], [5]))
        assert parts.item() == pytest.approx(full.item(), rel=1e-6)


def reference_topk(student_lp, teacher_lp, mask, normalization):
    B, T, K = student_lp.shape
    seqs, total, n_total = [], 0.0, 0
    for b in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if not mask[b, t]:
                continue
            for v in range(K):
                p, q = math.exp(student_lp[b, t, v]), math.exp(teacher_lp[b, t, v])
                s += p * (float(student_lp[b, t, v]) - float(teacher_lp[b, t, v])) - p + q
            n += 1
        seqs.append(s / max(n, 1))
        total += s
        n_total += n
    return sum(seqs) / B if normalization == "sequence" else total / n_total


@pytest.mark.parametrize("normalization", ["sequence", "token"])
def test_topk_loss_matches_reference(normalization):
    g = torch.Generator().manual_seed(5)
    s = torch.log_softmax(torch.randn(3, 6, 20, generator=g), -1)
    t = torch.log_softmax(torch.randn(3, 6, 20, generator=g) * 2, -1)
    t_top, idx = t.topk(8, -1)
    mask = torch.rand(3, 6, generator=g) > 0.2
    got = topk_reverse_kl_loss(s.gather(-1, idx), t_top, mask, normalization)
    assert got.item() == pytest.approx(reference_topk(s.gather(-1, idx), t_top, mask, normalization), rel=1e-5)


def test_topk_loss_is_zero_and_stationary_at_the_teacher():
    t = torch.log_softmax(torch.randn(2, 3, 10), -1)
    s = t.clone().requires_grad_(True)
    top, idx = t.topk(4, -1)
    loss = topk_reverse_kl_loss(s.gather(-1, idx), top, torch.ones(2, 3, dtype=torch.bool))
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert s.grad.abs().max() < 1e-6


def test_normalise_rejects_unknown_mode():
    with pytest.raises(ValueError, match="normalization"):
        normalise(torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), "batch")
