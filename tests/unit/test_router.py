import pytest
import torch

from mopd.models.compat import TokenizerMismatch, check_teacher_vocab, compare_tokenizers
from mopd.models.tiny import CHARSET, char_tokenizer, tiny_model
from mopd.rollout.types import Rollout, TokenBatch, collate
from mopd.teachers.base import Teacher, TeacherError, TeacherScores
from mopd.teachers.hf_teacher import HFTeacher
from mopd.teachers.router import TeacherRouter

TOK = char_tokenizer()
K = 5


def small_model(seed):
    return tiny_model(TOK, hidden_size=32, num_layers=1, num_heads=2, seed=seed)


def make_rollouts() -> list[Rollout]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i, (domain, text, n_gen) in enumerate([("math", "12+3=", 4), ("rev", "abc", 6), ("math", "7*8=", 2),
                                               ("rev", "hello world", 3), ("rev", "xy", 5)]):
        prompt = TOK(text)["input_ids"]
        gen = torch.randint(7, len(TOK), (n_gen,), generator=g).tolist()
        out.append(Rollout.from_completion(domain, prompt, gen, [-1.0] * n_gen, group=i))
    return out


def reference(model, ids: list[int]):
    """Plain full-logits log-softmax on the row alone: lp[t] = log p(ids[t] | ids[:t])."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    lp = torch.zeros(len(ids))
    lp[1:] = logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    top_lp, top_ids = logp[:-1].topk(K, dim=-1)
    return lp, top_ids, top_lp


def test_rollout_and_collate():
    r = Rollout.from_completion("d", [5, 6, 7], [8, 9], [-0.5, -0.25], reward=1.0)
    assert r.gen_mask == [False, False, False, True, True]
    assert r.sample_logprobs == [0.0, 0.0, 0.0, -0.5, -0.25]
    generated = [t for t, m in zip(r.token_ids, r.gen_mask) if m]
    assert generated == [8, 9] and sum(r.gen_mask) == 2 and r.prompt_len == 3
    with pytest.raises(ValueError, match="same length"):
        Rollout("d", [1, 2], [False], [0.0, 0.0], 1)
    rs = make_rollouts()
    b = collate(rs, TOK.pad_token_id, ["math", "rev", "unused"])
    assert b.input_ids.shape == (5, max(len(r.token_ids) for r in rs))
    assert b.domain_ids.tolist() == [0, 1, 0, 1, 1] and b.groups.tolist() == [0, 1, 2, 3, 4]
    assert int(b.gen_mask.sum()) == 20 and b.attention_mask[2].sum() == len(rs[2].token_ids)
    assert (b.input_ids[2, len(rs[2].token_ids):] == TOK.pad_token_id).all()
    sub = b.select([0, 2])
    assert sub.input_ids.shape == (2, max(len(rs[0].token_ids), len(rs[2].token_ids)))  # trimmed
    assert sub.input_ids[1, :len(rs[2].token_ids)].tolist() == rs[2].token_ids and sub.domains == b.domains
    assert sub.groups.tolist() == [0, 2]
    with pytest.raises(ValueError, match="first token"):
        collate([Rollout("d", [1, 2], [True, True], [0.0, 0.0], 0)], 0)


def test_router_matches_each_rows_own_teacher():
    models = {"t_math": small_model(1), "t_rev": small_model(2)}
    teachers = {"t_math": HFTeacher("t_math", models["t_math"]),
                "t_rev": HFTeacher("t_rev", models["t_rev"], micro_batch_size=2)}
    calls = {}
    for name, t in teachers.items():
        orig = t.score

        def counted(batch, topk=0, _orig=orig, _name=name):
            calls.setdefault(_name, []).append(batch.size)
            return _orig(batch, topk=topk)

        t.score = counted
    router = TeacherRouter(teachers, {"math": "t_math", "rev": "t_rev"})
    rs = make_rollouts()
    batch = collate(rs, TOK.pad_token_id)
    scores = router.score(batch, topk=K)
    assert calls == {"t_math": [2], "t_rev": [3]}  # one call per teacher, with its rows only
    assert scores.logprobs.shape == batch.input_ids.shape
    assert scores.topk_ids.shape == scores.topk_logprobs.shape == (*batch.input_ids.shape, K)
    for i, r in enumerate(rs):
        model = models["t_math" if r.domain == "math" else "t_rev"]
        lp, top_ids, top_lp = reference(model, r.token_ids)
        gen = torch.tensor(r.gen_mask)
        n = len(r.token_ids)
        torch.testing.assert_close(scores.logprobs[i, :n][gen], lp[gen], atol=1e-4, rtol=1e-4)
        assert (scores.logprobs[i, :n][~gen] == 0).all() and (scores.logprobs[i, n:] == 0).all()
        pos = gen[1:]  # entry t is predicted from position t-1
        assert torch.equal(scores.topk_ids[i, 1:n][pos], top_ids[pos])
        torch.testing.assert_close(scores.topk_logprobs[i, 1:n][pos], top_lp[pos], atol=1e-4, rtol=1e-4)
        # The other teacher would have given different numbers: routing matters.
        other = models["t_rev" if r.domain == "math" else "t_math"]
        assert not torch.allclose(reference(other, r.token_ids)[0][gen], lp[gen], atol=1e-3)
    plain = router.score(batch)
    assert plain.topk_ids is None and torch.equal(plain.logprobs, scores.logprobs)


class FakeTeacher(Teacher):
    def __init__(self, name, value):
        self.name, self.value, self.calls = name, value, 0

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        self.calls += 1
        return TeacherScores(torch.full(batch.input_ids.shape, self.value))


def test_router_groups_rows_by_routing_key_not_teacher_name():
    # Two teachers whose `name` attributes collide must still score their own domains.
    a, b = FakeTeacher("same", -1.0), FakeTeacher("same", -2.0)
    router = TeacherRouter({"a": a, "b": b}, {"math": "a", "rev": "b"})
    batch = collate(make_rollouts(), TOK.pad_token_id)
    lp = router.score(batch).logprobs
    assert (a.calls, b.calls) == (1, 1)
    for i, d in enumerate(batch.domain_ids.tolist()):
        n = int(batch.attention_mask[i].sum())
        assert (lp[i, :n] == (-1.0 if batch.domains[d] == "math" else -2.0)).all()


def test_router_errors():
    batch = collate(make_rollouts(), TOK.pad_token_id)
    router = TeacherRouter({"a": FakeTeacher("a", -1.0)}, {"math": "a"})
    with pytest.raises(TeacherError, match="no teacher for domain 'rev'"):
        router.score(batch)
    nan = TeacherRouter({"a": FakeTeacher("a", float("nan"))}, {"math": "a", "rev": "a"})
    with pytest.raises(TeacherError, match="'a' returned non-finite"):
        nan.score(batch)
    with pytest.raises(ValueError, match=r"\['rev'\] route to teachers that were not built: \['ghost'\]"):
        TeacherRouter({"a": FakeTeacher("a", -1.0)}, {"math": "a", "rev": "ghost"})


def test_tokenizer_compatibility():
    other = char_tokenizer(CHARSET[::-1])  # same characters, different ids
    with pytest.raises(TokenizerMismatch, match="teacher 'outsider'.*vocabularies differ"):
        check_teacher_vocab("outsider", TOK, other)
    assert check_teacher_vocab("same", TOK, char_tokenizer()).ok
    with pytest.raises(TokenizerMismatch, match="output layer of 10 tokens"):
        check_teacher_vocab("small", TOK, char_tokenizer(), model_vocab_size=10, student_vocab_size=len(TOK))
    templ = char_tokenizer()
    templ.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    rep = compare_tokenizers("t", TOK, templ)
    assert rep.same_vocab and rep.same_specials and not rep.same_chat_template
    assert rep.ok and "chat templates differ" in rep.detail
