"""float32 master weights for a 16-bit student: the same steps as AdamW on float32 copies fed
the model's gradients, small updates that accumulate, and a checkpoint that resumes them."""

import copy

import pytest
import torch

from mopd.build import build_run
from mopd.config.schema import OptimConfig
from mopd.training.loop import run_onpolicy
from mopd.distributed.master_weights import MasterWeightsAdamW, wants_master_weights
from mopd.training.optim import build_optimizer
from test_resume import config as resume_config


def bf16_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(torch.bfloat16)


def loss_of(net, step):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step)).to(torch.bfloat16)
    return net(x).float().pow(2).mean()


def test_steps_equal_adamw_on_float32_copies_given_the_models_gradients():
    net = bf16_net()
    opt = MasterWeightsAdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    ref = [p.detach().float().clone().requires_grad_(True) for p in net.parameters()]
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, foreach=False)  # the slow, obvious loop
    for step in range(4):
        opt.zero_grad()
        loss_of(net, step).backward()
        for r, p in zip(ref, net.parameters()):
            r.grad = p.grad.float()
        opt.step()
        ref_opt.step()
        for r, m, p in zip(ref, opt.masters, net.parameters()):
            torch.testing.assert_close(m, r.detach(), rtol=0, atol=1e-7)
            assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), r.detach().to(torch.bfloat16))


def test_small_updates_accumulate_where_plain_bf16_adamw_loses_them():
    def run(opt_cls, steps):
        w = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
        opt = opt_cls([w], lr=1e-3, weight_decay=0.0)
        for _ in range(steps):
            opt.zero_grad()
            w.sum().backward()  # gradient 1: Adam moves each weight by ~lr per step
            opt.step()
        return w.detach(), opt

    plain, _ = run(torch.optim.AdamW, 10)
    assert torch.equal(plain, torch.ones(8, dtype=torch.bfloat16))  # 1 - 1e-3 rounds back to 1 every step
    one, opt = run(MasterWeightsAdamW, 1)
    assert torch.equal(one, torch.ones(8, dtype=torch.bfloat16)) and (opt.masters[0] < 1).all()
    ten, opt = run(MasterWeightsAdamW, 10)
    torch.testing.assert_close(opt.masters[0], torch.full((8,), 0.99), rtol=0, atol=1e-5)
    assert (ten < 1).all() and torch.equal(ten, opt.masters[0].to(torch.bfloat16))


def test_zero_grad_clears_the_models_gradients():
    net = bf16_net()
    opt = MasterWeightsAdamW(net.parameters(), lr=1e-3)
    loss_of(net, 0).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    loss_of(net, 0).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())


def test_state_dict_carries_the_master_weights():
    net = bf16_net()
    opt = MasterWeightsAdamW(net.parameters(), lr=1e-2)
    for step in range(2):
        opt.zero_grad()
        loss_of(net, step).backward()
        opt.step()
    other = bf16_net(seed=5)
    other_opt = MasterWeightsAdamW(other.parameters(), lr=1e-2)
    other_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as through torch.save / torch.load
    for a, b, p, q in zip(opt.masters, other_opt.masters, net.parameters(), other.parameters()):
        assert torch.equal(a, b) and torch.equal(p, q)
    for o, n in ((opt, net), (other_opt, other)):  # both continue alike
        o.zero_grad()
        loss_of(n, 9).backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(opt.masters, other_opt.masters))


def test_when_master_weights_are_kept():
    bf16, fp32 = [torch.zeros(2, dtype=torch.bfloat16)], [torch.zeros(2)]
    assert wants_master_weights(bf16, None, own_master_weights=False)
    assert not wants_master_weights(fp32, None, own_master_weights=False)
    assert not wants_master_weights(bf16, None, own_master_weights=True)  # DeepSpeed / FSDP2 keep their own
    assert not wants_master_weights(bf16, False, own_master_weights=False)
    with pytest.raises(ValueError, match="16-bit student"):
        wants_master_weights(fp32, True, own_master_weights=False)
    with pytest.raises(ValueError, match="DeepSpeed or FSDP2"):
        wants_master_weights(bf16, True, own_master_weights=True)
    opt, sched = build_optimizer(bf16_net(), OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=1, steps=4))
    assert isinstance(opt, MasterWeightsAdamW) and sched.get_last_lr() == [0.0]
    assert type(build_optimizer(bf16_net(), OptimConfig(master_weights=False))[0]) is torch.optim.AdamW


def bf16_config(tmp_path, out):
    cfg = resume_config(tmp_path, out)
    cfg.student.dtype = "bfloat16"
    return cfg


def test_bf16_run_trains_and_resumes_through_its_master_weights(tmp_path):
    straight = build_run(bf16_config(tmp_path, "straight"))
    assert isinstance(straight.optimizer.optimizer, MasterWeightsAdamW)  # inside accelerate's wrapper
    init = {k: v.clone() for k, v in straight.model.state_dict().items()}
    run_onpolicy(straight)
    first = build_run(bf16_config(tmp_path, "split"))
    run_onpolicy(first, stop_at=3)
    second = build_run(bf16_config(tmp_path, "split"))
    run_onpolicy(second, resume=True)
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(v.dtype == torch.bfloat16 for v in a.values())
    assert not all(torch.equal(a[k], init[k]) for k in a)  # training did move the weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(straight.optimizer.optimizer.masters,
                                                 second.optimizer.optimizer.masters))
