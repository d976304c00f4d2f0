"""Teachers with another tokenizer: scored through text, mapped back by character spans.

- the span path with the student's own tokenizer is today's exact path, token for token;
- a teacher whose vocabulary is a permutation of the student's gives the exact path's numbers;
- the objective's span advantage against a slow per-span loop;
- the refusals: top-k, an undeclared vocabulary mismatch, multi-turn rows.
Real different tokenizers (SmolLM2's BPE and the character one) are in test_cross_tokenizer_smollm2.py.
"""

import pytest
import torch

from pair_tokenizer import permuted

from mopd.build import build_teacher
from mopd.config.schema import AlgorithmConfig, TeacherConfig
from mopd.data.prompts import render_prompt
from mopd.domains.base import Example
from mopd.models.compat import TokenizerMismatch
from mopd.models.loading import save_pretrained
from mopd.models.logprobs import TokenLogprobs
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.objectives.base import Totals
from mopd.objectives.mopd import MOPDObjective
from mopd.rollout.hf_engine import HFRolloutEngine
from mopd.rollout.types import Rollout, collate
from mopd.teachers.base import TeacherError
from mopd.teachers.cross_tokenizer import CrossTokenizerTeacher
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.router import TeacherRouter

EXAMPLES = [Example("a", prompt="rev:abc="), Example("b", messages=({"role": "user", "content": "sort 3142"},)),
            Example("a", prompt="x 1 2"), Example("b", messages=({"role": "user", "content": "hi"},))]


def sampled_batch(tok, student, max_new=12, seed=0):
    prompts = [render_prompt(e, tok) for e in EXAMPLES]
    outs = HFRolloutEngine(student, tok.pad_token_id, [tok.eos_token_id]).generate(
        prompts, max_new, 1.0, torch.Generator().manual_seed(seed))
    rollouts = [Rollout.from_completion(e.domain, p, c.token_ids, c.logprobs, example=e)
                for p, c, e in zip(prompts, outs, EXAMPLES)]
    return rollouts, collate(rollouts, tok.pad_token_id)


def cross(name, model, student_tok, teacher_tok):
    return CrossTokenizerTeacher(name, HFTeacher(name, model), student_tok, teacher_tok, [student_tok.eos_token_id])


def loss_and_grad(student, batch, signals, objective):
    student.zero_grad()
    out = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    lp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    lp = torch.nn.functional.pad(lp, (1, 0)) * batch.gen_mask
    res = objective.loss(TokenLogprobs(lp), batch, signals, Totals(batch.size, float(batch.gen_mask.sum())))
    res.loss.backward()
    return res, [p.grad.clone() for p in student.parameters()]


@pytest.mark.parametrize("mixture", [False, True])
def test_with_the_students_tokenizer_the_span_path_is_the_exact_path(mixture):
    tok = char_tokenizer()
    student, teacher, other = tiny_model(tok, seed=1), tiny_model(tok, seed=2), tiny_model(tok, seed=3)
    rollouts, batch = sampled_batch(tok, student)
    assert int(batch.gen_mask.sum()) > 30
    routes = {"a": "t", "b": [("t", 0.6), ("o", 0.4)] if mixture else "t"}
    exact = TeacherRouter({"t": HFTeacher("t", teacher), "o": HFTeacher("o", other)}, routes)
    spans = TeacherRouter({"t": cross("t", teacher, tok, tok), "o": HFTeacher("o", other)}, routes)
    algo = AlgorithmConfig(is_correction=None)
    want_obj, got_obj = MOPDObjective(exact, algo), MOPDObjective(spans, algo)
    want, got = want_obj.score(rollouts, batch), got_obj.score(rollouts, batch)
    assert torch.equal(got["lp_teacher"], want["lp_teacher"])
    assert torch.equal(got["span_start"], got["span_end"])  # every span one token on both sides
    w_out, w_grad = loss_and_grad(student, batch, want, want_obj)
    g_out, g_grad = loss_and_grad(student, batch, got, got_obj)
    assert torch.equal(g_out.loss, w_out.loss)
    for k in ("advantage", "reverse_kl"):
        assert torch.equal(g_out.token_metrics[k], w_out.token_metrics[k]), k
    assert all(torch.equal(a, b) for a, b in zip(g_grad, w_grad))


def test_a_teacher_with_a_permuted_vocabulary_scores_like_the_exact_path():
    tok = char_tokenizer()
    student, teacher = tiny_model(tok, seed=1), tiny_model(tok, seed=2)
    ptok, pteacher = permuted(tok, teacher)
    assert ptok.get_vocab() != tok.get_vocab()
    _, batch = sampled_batch(tok, student)
    want = HFTeacher("t", teacher).score(batch)
    got = cross("t", pteacher, tok, ptok).score(batch)
    torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-5, rtol=0)


def test_span_advantage_and_kl_against_a_loop():
    B, T = 2, 7
    g = torch.Generator().manual_seed(0)
    lp_pi, lp_t = -torch.rand(B, T, generator=g) * 3, -torch.rand(B, T, generator=g) * 12
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    spans = [[(2, 3), (4, 4), (5, 6)], [(1, 3), (4, 4)]]  # column ranges, per row
    start, end = torch.arange(T).expand(B, T).clone(), torch.arange(T).expand(B, T).clone()
    for b, row in enumerate(spans):
        for s, e in row:
            start[b, s: e + 1], end[b, s: e + 1] = s, e
            lp_t[b, s: e + 1] = lp_t[b, s]  # the teacher's span log-prob, on every token of the span
    batch = collate([Rollout("a", [1] * 7, m.tolist(), [0.0] * 7, 0) for m in mask], 0)
    obj = MOPDObjective(TeacherRouter({}, {}), AlgorithmConfig(a_max=2.0, is_correction=None))
    out = obj.loss(TokenLogprobs(lp_pi * mask), batch, {"lp_teacher": lp_t, "span_start": start, "span_end": end},
                   Totals(B, float(mask.sum())))
    for b, row in enumerate(spans):
        for s, e in row:
            ratio = float(lp_t[b, s]) - float((lp_pi[b, s: e + 1]).sum())
            for t in range(s, e + 1):
                assert out.token_metrics["advantage"][b, t].item() == pytest.approx(max(-2.0, min(2.0, ratio)), abs=1e-5)
                assert out.token_metrics["reverse_kl"][b, t].item() == pytest.approx(-ratio / (e - s + 1), abs=1e-5)


def test_topk_is_refused_naming_the_key():
    tok = char_tokenizer()
    router = TeacherRouter({"far": cross("far", tiny_model(tok), tok, tok)}, {"a": "far"})
    with pytest.raises(ValueError, match=r"algorithm.loss: topk.*\['far'\].*cross_tokenizer"):
        MOPDObjective(router, AlgorithmConfig(loss="topk"))


def test_another_vocabulary_is_refused_unless_declared(tmp_path):
    tok = char_tokenizer()
    student = tiny_model(tok, seed=1)
    ptok, pteacher = permuted(tok, tiny_model(tok, seed=2))
    save_pretrained(pteacher, ptok, tmp_path / "t")
    with pytest.raises(TokenizerMismatch, match="cross_tokenizer: true"):
        build_teacher(TeacherConfig(name="t", model={"path": str(tmp_path / "t")}), student, tok)
    t = build_teacher(TeacherConfig(name="t", model={"path": str(tmp_path / "t")}, cross_tokenizer=True), student, tok)
    assert isinstance(t, CrossTokenizerTeacher) and t.teacher_tok.get_vocab() == ptok.get_vocab()


def test_a_multi_turn_row_is_refused():
    tok = char_tokenizer()
    ids = render_prompt(EXAMPLES[0], tok) + [20, 21, 22, 23]
    r = Rollout("a", ids, [False] * (len(ids) - 4) + [True, False, True, True], [0.0] * len(ids), 0,
                example=EXAMPLES[0])
    with pytest.raises(TeacherError, match="single-turn"):
        cross("t", tiny_model(tok), tok, tok).score(collate([r], 0))


def test_a_pair_tokenizer_teacher_through_the_router_and_the_objective():
    """Spans of two characters: every number the objective uses, against a slow per-span loop
    over the teacher's own forward, in a mixture with a same-tokenizer teacher."""
    from pair_tokenizer import pair_tokenizer

    tok, ptok = char_tokenizer(), pair_tokenizer()
    student, pteacher, other = tiny_model(tok, seed=1), tiny_model(ptok, seed=6).eval(), tiny_model(tok, seed=3)
    rollouts, batch = sampled_batch(tok, student)
    far = cross("far", pteacher, tok, ptok)
    router = TeacherRouter({"far": far, "o": HFTeacher("o", other)}, {"a": "far", "b": [("far", 0.5), ("o", 0.5)]})
    obj = MOPDObjective(router, AlgorithmConfig(a_max=3.0, is_correction=None))
    signals = obj.score(rollouts, batch)
    out, _ = loss_and_grad(student, batch, signals, obj)
    with torch.no_grad():
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        lp_pi = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        lp_pi = torch.nn.functional.pad(lp_pi, (1, 0)) * batch.gen_mask
    multi = 0
    for b in range(batch.size):
        p = far.plan(batch, b)
        n = len(p.teacher_prompt)
        x = torch.tensor([p.teacher_prompt + p.teacher_completion])
        with torch.no_grad():
            lp_t = torch.log_softmax(pteacher(x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[n - 1:, 0]
        w_far = 1.0 if batch.domains[int(batch.domain_ids[b])] == "a" else 0.5
        for k in sorted(set(p.student_spans)):
            cols = [c for c, s in zip(p.columns, p.student_spans) if s == k]
            span_t = sum(float(lp_t[j]) for j, s in enumerate(p.teacher_spans) if s == k)
            multi += len(cols) > 1
            for c in cols:
                assert signals["lp_teacher"][b, c, 0].item() == pytest.approx(span_t, abs=1e-4)
                assert (signals["span_start"][b, c, 0].item(), signals["span_end"][b, c, 0].item()) == (cols[0], cols[-1])
                ratio = span_t - float(lp_pi[b, cols].sum())
                want = w_far * max(-3.0, min(3.0, ratio))
                if w_far < 1:  # the same-tokenizer teacher: its own token, per token
                    o_t = float(signals["lp_teacher"][b, c, 1])
                    want += 0.5 * max(-3.0, min(3.0, o_t - float(lp_pi[b, c])))
                assert out.token_metrics["advantage"][b, c].item() == pytest.approx(want, abs=1e-4)
    assert multi > 10  # the pairs really make spans of several student tokens
