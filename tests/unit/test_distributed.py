"""The `distributed` config section, and the pieces of mopd.distributed.runtime that work in
one process: rank shares of the prompt mixture, metric combination, the wrapped-model forward,
accelerate's state across runs, and bf16 autocast on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mopd.models.logprobs import token_logprobs
from mopd.build import build_run
from mopd.config.load import ConfigError, load_config
from mopd.config.schema import RunConfig
from mopd.data.mixture import MixtureSampler
from mopd.domains.base import Example
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.distributed.runtime import (Accelerated, RankShard, ThroughWrapper, _warn_if_launch_setting_dropped,
                                      build_accelerator, check_engines, combine_metrics)
from mopd.training.loop import run_onpolicy

ROOT = Path(__file__).resolve().parents[2]


def base(**distributed) -> dict:
    return {
        "student": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "teachers": [{"name": "me", "kind": "self"}],
        "domains": [{"name": "rev", "teacher": "me",
                     "prompts": {"builtin": "reversal", "params": {"n_train": 20, "n_eval": 5}}}],
        **({"distributed": distributed} if distributed else {}),
    }


def load(data: dict) -> RunConfig:
    return load_config(None, RunConfig, data=data)


def test_distributed_defaults_and_values():
    cfg = load(base())
    assert (cfg.distributed.device, cfg.distributed.mixed_precision) == ("auto", "no")
    cfg = load(base(device="cuda", mixed_precision="fp16"))
    assert (cfg.distributed.device, cfg.distributed.mixed_precision) == ("cuda", "fp16")


@pytest.mark.parametrize("section, key", [({"device": "tpu"}, "distributed.device"),
                                          ({"mixed_precision": "fp8"}, "distributed.mixed_precision"),
                                          ({"devices": "cpu"}, "distributed.devices")])
def test_bad_distributed_values_name_their_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(base(**section))


def test_fp16_on_the_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16.*needs a GPU"):
        load(base(device="cpu", mixed_precision="fp16"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
def test_gpu_settings_without_a_gpu_fail_at_build():
    with pytest.raises(ValueError, match="sees no GPU"):
        build_accelerator(load(base(device="cuda")).distributed)
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        build_accelerator(load(base(mixed_precision="fp16")).distributed)  # auto falls back to the CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what accelerate does on CPU processes")
def test_a_launch_asking_for_fsdp_on_the_cpu_warns_that_it_is_dropped(monkeypatch, caplog):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp2.yaml` sets
    with caplog.at_level("WARNING", logger="mopd.distributed.runtime"):
        dist = Accelerated.from_config(load(base(device="cpu")).distributed)
        Accelerated.from_config(load(base(device="cpu")).distributed)  # a run builds several
    assert not dist.fsdp2
    assert caplog.text.count("asked for FSDP, but accelerate runs this as NO") == 1  # said once
    caplog.clear()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    Accelerated.from_config(load(base(device="cpu")).distributed)
    assert "asked for" not in caplog.text  # a plain launch: nothing to say


def test_a_dropped_deepspeed_launch_is_named_too(monkeypatch, caplog):
    # Without DeepSpeed installed accelerate itself refuses the launch; with it, on CPU processes
    # it would run without it. The check, given what accelerate decided:
    from accelerate.utils import DistributedType

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with caplog.at_level("WARNING", logger="mopd.distributed.runtime"):
        _warn_if_launch_setting_dropped(DistributedType.DEEPSPEED)
        assert not caplog.text
        _warn_if_launch_setting_dropped(DistributedType.MULTI_CPU)
    assert "asked for DEEPSPEED, but accelerate runs this as MULTI_CPU" in caplog.text


def test_in_process_vllm_is_refused_only_where_fsdp2_shards_the_weights():
    cfg = load({**base(), "rollout": {"engine": "vllm"}})
    check_engines(cfg, 1)  # one process
    check_engines(cfg, 2)  # one engine per rank (DDP, DeepSpeed ZeRO-2): tests/vllm/test_vllm_two_processes.py
    check_engines(cfg, 1, sharded=True)  # FSDP2 alone in one process holds every weight
    with pytest.raises(ValueError, match="rollout.engine 'vllm'.*FSDP2 shards"):
        check_engines(cfg, 2, sharded=True)
    teacher = load({**base(), "teachers": [{"name": "me", "kind": "vllm", "model": {"path": "some/dir"}}]})
    check_engines(teacher, 2, sharded=True)  # a vLLM teacher loads its own weights
    check_engines(load(base()), 2, sharded=True)  # no vLLM


def test_example_configs_load():
    cfg = load_config(ROOT / "examples" / "multi_gpu_remote_teachers.yaml", RunConfig)
    assert [t.kind for t in cfg.teachers] == ["remote", "remote"]
    assert all(t.api_key_env and t.url.startswith("http") for t in cfg.teachers)
    assert (cfg.distributed.device, cfg.distributed.mixed_precision) == ("cuda", "bf16")
    assert cfg.sampling.prompts_per_step % 8 == 0  # the 8 processes of its launch command


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp2", "FSDP"), ("zero2", "DEEPSPEED")])
def test_accelerate_configs_load_in_accelerate(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type == kind
    if name == "fsdp2":
        assert cfg.fsdp_config["fsdp_version"] == 2
    if name == "zero2":
        assert cfg.deepspeed_config["zero_stage"] == 2 and cfg.deepspeed_config["gradient_accumulation_steps"] == 1


def sampler() -> MixtureSampler:
    examples = {d: [Example(d, prompt=f"{d}{i}") for i in range(10)] for d in ("a", "b")}
    return MixtureSampler(examples, {"a": 3.0, "b": 1.0}, seed=7)


def test_rank_shares_split_one_draw_and_keep_its_mix():
    whole, shards = sampler(), [RankShard(sampler(), r, 2) for r in range(2)]
    for _ in range(3):
        batch = whole.next_batch(8)
        parts = [s.next_batch(8) for s in shards]
        assert sorted(e.prompt for p in parts for e in p) == sorted(e.prompt for e in batch)
        assert not {e.prompt for e in parts[0]} & {e.prompt for e in parts[1]}
        assert [sum(e.domain == "a" for e in p) for p in parts] == [3, 3]  # 6 of 8 are 'a' overall
    assert shards[0].state_dict() == shards[1].state_dict() == whole.state_dict()  # one state to save


def test_combine_metrics_sums_counts_and_averages_the_rest():
    out = combine_metrics([{"loss": 1.0, "sequences": 4, "reward/a": 0.5},
                           {"loss": 3.0, "sequences": 4, "reward/b": 1.0}])
    assert out == {"loss": 2.0, "sequences": 8.0, "reward/a": 0.5, "reward/b": 1.0}


def test_wrapped_forward_matches_the_direct_one():
    """Through a wrapper the model's own forward runs; log-probs and gradients must equal those
    of the direct trunk + head path."""
    tok = char_tokenizer()
    model = tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 30, (3, 9), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :2] = 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 5:] = True

    def run(m):
        model.zero_grad()
        out = token_logprobs(m, ids, attn, mask, with_entropy=True, chunk_size=4)
        out.logprobs.sum().backward()
        return out, [p.grad.clone() for p in model.parameters()]

    direct, g1 = run(model)
    for head_outside in (True, False):  # chunked head on the hidden states / full logits (FSDP2)
        wrapped, g2 = run(ThroughWrapper(model, model, head_outside=head_outside))
        assert torch.allclose(direct.logprobs, wrapped.logprobs, atol=1e-6)
        assert torch.allclose(direct.entropy, wrapped.entropy, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


def test_bf16_autocast_trains_on_the_cpu_and_settings_can_change(tmp_path):
    data = {**base(device="cpu", mixed_precision="bf16"), "output_dir": str(tmp_path / "bf16"),
            "sampling": {"prompts_per_step": 4, "max_new_tokens": 4}, "optim": {"steps": 2, "lr": 1e-3},
            "logging": {"progress": False}}
    run = build_run(load(data))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    with run.dist.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    last = run_onpolicy(run)
    after = run.model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())  # weights keep student.dtype
    assert any(not torch.equal(before[k], after[k]) for k in after)
    assert last["grad_norm"] > 0
    # Another run in the same process with other settings gets accelerate state of its own.
    plain = build_run(load({**data, "distributed": {"device": "cpu"}, "output_dir": str(tmp_path / "no")}))
    with plain.dist.autocast():
        assert not torch.is_autocast_enabled("cpu")
