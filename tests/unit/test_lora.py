"""LoRA (peft) students: only the adapter trains, the 'self' teacher is the base model in the
student's own memory, merged weights equal peft's merge, resume equals a straight run, and the
adapter written at the end is read back by `mopd merge-lora` and `mopd eval`'s loader."""

import copy

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mopd.models.logprobs import token_logprobs
from mopd.build import build_model, build_run, build_teacher
from mopd.cli import app
from mopd.config.load import ConfigError, load_config
from mopd.config.schema import ModelSpec, RunConfig, TeacherConfig
from mopd.models.loading import load_model, save_pretrained
from mopd.models.lora import merged_state_dict
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.pipeline.stages import load
from mopd.teachers.hf_teacher import HFTeacher
from mopd.training.checkpoint import latest_checkpoint
from mopd.training.loop import run_onpolicy, save_model

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj"]}
STUDENT = {"tiny": {"seed": 1}, "lora": LORA}


def config(tmp_path, out, **over):
    teacher = tmp_path / "teacher"
    if not teacher.exists():
        tok = char_tokenizer()
        save_pretrained(tiny_model(tok, seed=11), tok, teacher)
    data = {
        "output_dir": str(tmp_path / out), "seed": 3, "student": STUDENT,
        "teachers": [{"name": "t", "model": {"path": str(teacher)}}, {"name": "base", "kind": "self"}],
        "domains": [{"name": "rev", "prompts": {"builtin": "reversal", "params": {"n_train": 30, "n_eval": 5}},
                     "teacher": "t", "weight": 2},
                    {"name": "sort", "prompts": {"builtin": "sorting", "params": {"n_train": 30, "n_eval": 5}},
                     "teacher": [{"name": "t", "weight": 1}, {"name": "base", "weight": 1}]}],
        "sampling": {"prompts_per_step": 4, "max_new_tokens": 5},
        "optim": {"steps": 4, "lr": 1e-2, "schedule": "cosine", "warmup_steps": 1, "grad_accum_steps": 2},
        "checkpoint": {"every": 2, "keep": 2},
        "logging": {"progress": False},
    }
    return load_config(None, RunConfig, data={**data, **over})


def lora_student(seed=0):
    model, tok = build_model(ModelSpec(**STUDENT))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B starts at 0 (the adapter is a no-op): make it do something
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model, tok


def logprobs(model, ids):
    gen = torch.ones_like(ids, dtype=torch.bool)
    gen[:, 0] = False
    with torch.no_grad():
        return token_logprobs(model, ids, torch.ones_like(ids), gen).logprobs


def test_only_adapter_parameters_train():
    model, _ = build_model(ModelSpec(**STUDENT))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any(".up_proj.lora_A." in n for n in trainable)  # target_modules were taken


@pytest.mark.parametrize("bad, named", [({"rank": 4}, "'rank' (did you mean 'r'?)"),
                                        ({"alpha": 4}, "'alpha' (did you mean 'lora_alpha'?)"),
                                        ({"r": 4, "lora_dropoutt": 0.1}, "'lora_dropoutt'")])
def test_bad_lora_keys_are_named(tmp_path, bad, named):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, "x", student={"tiny": {}, "lora": bad})
    assert "student.lora" in str(e.value) and named in str(e.value)


def test_lora_refused_where_it_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="student only"):
        TeacherConfig(name="t", model={"tiny": {}, "lora": LORA})
    with pytest.raises(ConfigError, match="overlap_chunks"):
        config(tmp_path, "x", sampling={"prompts_per_step": 4, "overlap_chunks": 2})
    with pytest.raises(ConfigError, match="not a peft adapter"):
        config(tmp_path, "x", student={"tiny": {}, "lora": {"path": str(tmp_path)}})


def test_merged_weights_equal_merge_and_unload():
    model, _ = lora_student()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mine = merged_state_dict(model)
    theirs = copy.deepcopy(model).merge_and_unload().state_dict()
    assert list(mine) == list(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    plain = tiny_model(char_tokenizer(), seed=0)
    plain.load_state_dict(mine)  # the base's names, all of them
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    torch.testing.assert_close(logprobs(plain, ids), logprobs(model, ids), atol=1e-5, rtol=0)


def test_self_teacher_is_the_base_model_in_the_students_memory():
    model, tok = lora_student()
    teacher = build_teacher(TeacherConfig(name="self", kind="self"), model, tok)
    base = load_model(ModelSpec(tiny={"seed": 1}), tok)
    shared = q_weight(model)
    assert q_weight(teacher.model).data_ptr() == shared.data_ptr()
    assert sum(p.numel() for p in teacher.model.parameters()) == sum(p.numel() for p in model.parameters())
    from mopd.rollout.types import TokenBatch

    ids = torch.tensor([[3, 5, 7, 9, 11, 13], [4, 6, 8, 10, 12, 14]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, :2] = False
    batch = TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids), gen_mask=mask,
                       sample_logprobs=torch.zeros(ids.shape), domain_ids=torch.zeros(2, dtype=torch.long),
                       groups=torch.arange(2), domains=["d"])
    model.train()
    got = teacher.score(batch).logprobs
    want = HFTeacher("base", base).score(batch).logprobs
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(logprobs(model, ids), logprobs(base, ids))  # the adapter is on again
    assert model.training and shared.requires_grad is False


def q_weight(peft_model):
    return peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight


def test_a_step_changes_only_the_adapter(tmp_path):
    run = build_run(config(tmp_path, "one", optim={"steps": 1, "lr": 1e-2}))
    teacher = run.objective.router.teachers["base"]  # as built for a run: no copy there either
    assert q_weight(teacher.model).data_ptr() == q_weight(run.model).data_ptr()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run_onpolicy(run)
    after = run.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_A." in k or ".lora_B." in k for k in changed)


def test_resume_equals_straight_run_and_final_adapter_is_readable(tmp_path):
    straight = build_run(config(tmp_path, "straight"))
    run_onpolicy(straight)
    first = build_run(config(tmp_path, "split"))
    run_onpolicy(first, stop_at=3)
    ckpt = latest_checkpoint(tmp_path / "split" / "checkpoints")
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    second = build_run(config(tmp_path, "split"))
    run_onpolicy(second, resume=True)
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    a_opt, b_opt = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(a_opt[i]["exp_avg_sq"], b_opt[i]["exp_avg_sq"]) for i in a_opt)

    final = tmp_path / "final"
    save_model(straight, final)
    merged, _ = load(final)  # what `mopd eval` loads
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    torch.testing.assert_close(logprobs(merged, ids), logprobs(straight.model, ids), atol=1e-5, rtol=0)
    res = CliRunner().invoke(app, ["merge-lora", str(final), str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    plain, _ = load(tmp_path / "merged")
    torch.testing.assert_close(logprobs(plain, ids), logprobs(merged, ids), atol=0, rtol=0)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(config(tmp_path, "straight").model_dump(mode="json")))
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["eval", str(final), str(run_yaml)])
    assert res.exit_code == 0 and "rev" in res.output and "sort" in res.output, res.output


def test_lora_path_continues_an_adapter(tmp_path):
    model, tok = lora_student(seed=4)
    model.save_pretrained(tmp_path / "adapter")
    again, _ = build_model(ModelSpec(tiny={"seed": 1}, lora={"path": str(tmp_path / "adapter")}))
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    torch.testing.assert_close(logprobs(again, ids), logprobs(model, ids), atol=0, rtol=0)
    trainable = [n for n, p in again.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)  # loaded to train, not for inference


def test_fsdp2_and_deepspeed_are_refused_with_the_reason(tmp_path):
    from types import SimpleNamespace

    from mopd.build import check_lora_backend

    cfg = config(tmp_path, "x")
    check_lora_backend(cfg, SimpleNamespace(fsdp2=False, deepspeed=False))  # one process, DDP
    for dist in (SimpleNamespace(fsdp2=True, deepspeed=False), SimpleNamespace(fsdp2=False, deepspeed=True)):
        with pytest.raises(ValueError, match="not yet under FSDP2 or DeepSpeed"):
            check_lora_backend(cfg, dist)


def test_dora_with_the_vllm_engine_is_refused_before_anything_loads(tmp_path):
    """vLLM samples from merged weights and DoRA's merge is not implemented: refused at build time,
    inline (`use_dora: true`) or in an existing adapter's own config, not at the first push."""
    from types import SimpleNamespace

    from mopd.build import check_lora_backend

    one = SimpleNamespace(fsdp2=False, deepspeed=False)
    dora = config(tmp_path, "x", student={**STUDENT, "lora": {**LORA, "use_dora": True}},
                  rollout={"engine": "vllm"})
    with pytest.raises(ValueError, match="use_dora"):
        check_lora_backend(dora, one)
    check_lora_backend(config(tmp_path, "x", rollout={"engine": "vllm"}), one)  # plain LoRA: fine
    check_lora_backend(config(tmp_path, "x", student={**STUDENT, "lora": {**LORA, "use_dora": True}}), one)  # hf
    model, _ = build_model(ModelSpec(tiny={"seed": 1}, lora={**LORA, "use_dora": True}))
    model.save_pretrained(tmp_path / "dora")
    saved = config(tmp_path, "x", student={"tiny": {"seed": 1}, "lora": {"path": str(tmp_path / "dora")}},
                   rollout={"engine": "vllm"})
    with pytest.raises(ValueError, match="use_dora"):
        check_lora_backend(saved, one)
