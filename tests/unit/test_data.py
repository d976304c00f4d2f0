import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mopd.data.mixture import MixtureSampler
from mopd.data.prompts import DataError, load_domain_examples, read_rows, render_prompt, row_to_example
from mopd.domains.base import Example
from mopd.models.tiny import char_tokenizer

ROWS = [
    {"prompt": "2+2=", "domain": "math", "answer": 4},
    {"messages": [{"role": "user", "content": "hi"}], "domain": "chat"},
    {"prompt": "3+3=", "domain": "math", "answer": "6"},
    {"prompt": "no label"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def table_rows():
    # Columnar formats hold every column in every row, nulls where a row lacks one.
    keys = ("prompt", "messages", "domain", "answer")
    return [{k: (str(r[k]) if k == "answer" else r[k]) if r.get(k) is not None else None for k in keys}
            for r in ROWS]


def check_rows(path):
    math = load_domain_examples(path, "math")
    assert [e.prompt for e in math] == ["2+2=", "3+3=", "no label"]  # unlabelled rows adopted
    assert [e.answer for e in math] == ["4", "6", None]
    assert all(e.domain == "math" for e in math)
    chat = load_domain_examples(path, "chat")
    assert len(chat) == 2 and chat[0].prompt is None
    assert chat[0].messages == ({"role": "user", "content": "hi"},)
    assert chat[1].prompt == "no label" and chat[1].domain == "chat"


def test_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in ROWS[1:]))
    assert len(read_rows(str(path))) == 4  # blank lines skipped
    check_rows(str(path))


def test_parquet(tmp_path):
    path = tmp_path / "p.parquet"
    rows = table_rows()
    pq.write_table(pa.Table.from_pylist(rows), path)
    check_rows(str(path))


def test_datasets_saved_to_disk(tmp_path):
    import datasets

    rows = table_rows()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    check_rows(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1]),
                          "test": datasets.Dataset.from_list(rows[2:3])}).save_to_disk(str(tmp_path / "dd"))
    assert [e.prompt for e in load_domain_examples(str(tmp_path / "dd"), "math", "test")] == ["3+3="]
    with pytest.raises(DataError, match="no split 'dev'"):
        read_rows(str(tmp_path / "dd"), "dev")


def test_file_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        load_domain_examples(str(empty), "math")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_domain_examples(str(bad), "math")
    with pytest.raises(DataError, match="does not exist"):
        read_rows(str(tmp_path / "missing.jsonl"))
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "a", "domain": "x"}, {"prompt": "b", "domain": "y"}])
    with pytest.raises(DataError, match=r"no rows for domain 'math'; domains in the file: \['x', 'y'\]"):
        load_domain_examples(other, "math")


@pytest.mark.parametrize("row, words", [
    ({"answer": "1"}, "neither 'prompt' nor 'messages'"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "both 'prompt' and 'messages'"),
    ({"messages": "hello"}, "'messages' must be a list"),
    ({"messages": [{"role": "user"}]}, "'messages' must be a list"),
    ({"prompt": 3}, "'prompt' must be a string"),
    ({"prompt": ""}, "'prompt' is empty"),
    ([1, 2], "a row must be an object"),
])
def test_bad_rows_name_the_row(tmp_path, row, words):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, row])
    with pytest.raises(DataError) as e:
        load_domain_examples(path, "math")
    assert "p.jsonl, row 1" in str(e.value) and words in str(e.value)


def test_row_to_example():
    e = row_to_example({"prompt": "x", "answer": 7, "extra": 1}, "d", "here")
    assert e == Example(domain="d", prompt="x", answer="7")


def test_render_prompt():
    tok = char_tokenizer()
    chat = Example(domain="d", messages=({"role": "system", "content": "be nice"},
                                         {"role": "user", "content": "ab c"}))
    ids = render_prompt(chat, tok)
    tokens = ["<|system|>", *"be nice", "<|end|>", "<|user|>", *"ab c", "<|end|>", "<|assistant|>"]
    assert ids == tok.convert_tokens_to_ids(tokens)
    assert ids == tok("<|system|>be nice<|end|><|user|>ab c<|end|><|assistant|>")["input_ids"]
    plain = render_prompt(Example(domain="d", prompt="12+3="), tok)
    assert plain == tok.convert_tokens_to_ids(list("12+3=")) and len(plain) == 5
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        render_prompt(chat, tok)


# ---------- MixtureSampler ----------


def pools(sizes: dict[str, int]) -> dict[str, list[Example]]:
    return {d: [Example(domain=d, prompt=f"{d}{i}") for i in range(n)] for d, n in sizes.items()}


def test_mixture_shares_within_one_prompt_every_step():
    weights = {"a": 0.35, "b": 0.35, "c": 0.30, "z": 0.0}
    s = MixtureSampler(pools({"a": 13, "b": 7, "c": 5, "z": 3}), weights, seed=1)
    drawn, total = Counter(), 0
    for step in range(60):
        n = 1 + step % 7
        batch = s.next_batch(n)
        assert len(batch) == n
        drawn.update(e.domain for e in batch)
        total += n
        for d in "abc":
            assert abs(drawn[d] - weights[d] * total) <= 1, (step, d, drawn, total)
    assert "z" not in drawn  # zero weight: never drawn
    assert sum(drawn.values()) == total


def test_mixture_counts_follow_integer_weights_exactly():
    s = MixtureSampler(pools({"a": 3, "b": 3}), {"a": 1, "b": 3})
    for _ in range(5):
        assert Counter(e.domain for e in s.next_batch(4)) == {"a": 1, "b": 3}


def test_mixture_cycles_each_domain_once_per_epoch():
    s = MixtureSampler(pools({"a": 5, "b": 3}), {"a": 1, "b": 1}, seed=0)
    seen = {"a": [], "b": []}
    for _ in range(15):
        for e in s.next_batch(2):
            seen[e.domain].append(e.prompt)
    for d, n in (("a", 5), ("b", 3)):
        epochs = [seen[d][i:i + n] for i in range(0, len(seen[d]) - n + 1, n)]
        assert len(epochs) >= 3
        for ep in epochs:
            assert sorted(ep) == sorted(f"{d}{i}" for i in range(n))
    # A new epoch is reshuffled, not a repeat of the first order.
    assert seen["a"][:5] != seen["a"][5:10] or seen["a"][5:10] != seen["a"][10:15]


def test_mixture_deterministic_per_seed():
    def run(seed):
        s = MixtureSampler(pools({"a": 20, "b": 20}), {"a": 2, "b": 1}, seed=seed)
        return [e.prompt for _ in range(10) for e in s.next_batch(3)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_mixture_resume_gives_the_same_batches():
    def make():
        return MixtureSampler(pools({"a": 7, "b": 4, "c": 3}), {"a": 0.5, "b": 0.3, "c": 0.2}, seed=3)

    full = make()
    batches = [full.next_batch(5) for _ in range(12)]
    first = make()
    for _ in range(4):
        first.next_batch(5)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
    resumed = make()
    resumed.load_state_dict(state)
    assert [resumed.next_batch(5) for _ in range(8)] == batches[4:]


def test_mixture_errors():
    with pytest.raises(ValueError, match="sum to zero"):
        MixtureSampler(pools({"a": 1}), {"a": 0})
    with pytest.raises(ValueError, match=r"\['b'\] have a positive weight but no prompts"):
        MixtureSampler({"a": pools({"a": 1})["a"], "b": []}, {"a": 1, "b": 1})
