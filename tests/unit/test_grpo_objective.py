"""The GRPO objective used by teachers, Mix-RL and Cascade RL: dynamic sampling drops
all-equal groups and the loss is token-normalised over the kept tokens."""

import pytest
import torch

from mopd.models.logprobs import TokenLogprobs
from mopd.objectives.base import Totals
from mopd.objectives.grpo import GRPOObjective
from mopd.rollout.types import Rollout, collate


def rollouts():
    spec = [(0, 1.0, 3), (0, 0.0, 2), (1, 1.0, 2), (1, 1.0, 4)]  # group 1: all equal -> dropped
    return [Rollout.from_completion("d", [5, 6], list(range(7, 7 + n)), [-1.0] * n, group=g, reward=r)
            for g, r, n in spec]


def test_loss_matches_hand_computation():
    rs = rollouts()
    batch = collate(rs, 0)
    obj = GRPOObjective(is_correction=None)
    sig = obj.score(rs, batch)
    assert sig["keep"].tolist() == [True, True, False, False]
    lp = torch.full(batch.input_ids.shape, -1.0, requires_grad=True)
    # update_step normalises by the objective's loss mask: the kept groups' generated tokens.
    kept = obj.loss_mask(batch, sig)
    assert int(kept.sum()) == 5 and not kept[2:].any()
    out = obj.loss(TokenLogprobs(lp), batch, sig, Totals(4, int(kept.sum())))
    assert out.active_tokens == 5
    # group 0: rewards (1, 0) -> advantages (+1, -1) with population std; 3 + 2 kept tokens.
    adv = sig["advantage"].tolist()
    assert adv[0] == pytest.approx(1.0, abs=1e-5) and adv[1] == pytest.approx(-1.0, abs=1e-5)
    want = -(3 * adv[0] * -1.0 + 2 * adv[1] * -1.0) / 5
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    out.loss.backward()
    assert lp.grad[2:].abs().sum() == 0  # dropped group: no gradient


def test_missing_verifier_is_an_error():
    rs = rollouts()
    rs[0].reward = None
    with pytest.raises(ValueError, match="verifier"):
        GRPOObjective().score(rs, collate(rs, 0))
