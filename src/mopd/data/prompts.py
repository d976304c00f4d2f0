"""Domain-tagged prompts from JSONL / parquet files, `datasets` datasets or built-in domains.

A row holds a plain `prompt` string or chat `messages`, optionally a `domain` label and an
`answer` for the verifier. Rows are checked as they are read; a bad row is an error that
names the file and the row.
"""

from __future__ import annotations

import json
from pathlib import Path

from mopd.domains.base import Example


class DataError(ValueError):
    pass


def read_rows(path: str, split: str = "train") -> list[dict]:
    p = Path(path)
    if p.suffix in (".jsonl", ".json") and p.is_file():
        rows = []
        try:
            lines = p.read_text(encoding="utf-8").split("\n")  # not splitlines: JSON strings may hold U+2028
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read prompt file {path}: {e}; it must be UTF-8 JSON Lines") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
        return rows
    if p.suffix == ".parquet" and p.is_file():
        import pyarrow.parquet as pq

        try:
            return pq.read_table(p).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
            raise DataError(f"cannot read parquet file {path}: {e}") from None
    if p.suffix in (".jsonl", ".json", ".parquet"):
        raise DataError(f"prompt file {path} does not exist")
    import datasets  # a dataset saved with save_to_disk, or a hub dataset name

    try:
        ds = datasets.load_from_disk(path) if p.is_dir() else datasets.load_dataset(path, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds
        raise DataError(f"cannot read prompts from {path!r}: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"dataset {path} has no split {split!r}; splits: {list(ds)}")
        ds = ds[split]
    return list(ds)


def row_to_example(row: dict, domain: str, where: str) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be an object, got {type(row).__name__}")
    prompt, messages = row.get("prompt"), row.get("messages")
    if prompt is None and messages is None:
        raise DataError(f"{where}: row has neither 'prompt' nor 'messages' (keys: {sorted(row)})")
    if prompt is not None and not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' must be a string")
    if prompt is not None and not prompt:
        raise DataError(f"{where}: 'prompt' is empty")
    if messages is not None:
        if prompt is not None:
            raise DataError(f"{where}: row has both 'prompt' and 'messages'; keep one")
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        messages = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    answer = row.get("answer")
    return Example(domain=domain, prompt=prompt, messages=messages,
                   answer=None if answer is None else str(answer))


def load_domain_examples(path: str, domain: str, split: str = "train") -> list[Example]:
    """Rows of `path` for `domain`: rows labelled with another domain are left out, and
    unlabelled rows belong to `domain`."""
    rows = read_rows(path, split)
    if not rows:
        raise DataError(f"prompt source {path} is empty")
    examples, labels = [], set()
    for i, row in enumerate(rows):
        label = row.get("domain") if isinstance(row, dict) else None
        if label is not None and not isinstance(label, str):
            raise DataError(f"{path}, row {i}: 'domain' must be a string naming a domain, got {label!r}")
        if label is not None:
            labels.add(label)
            if label != domain:
                continue
        examples.append(row_to_example(row, domain, f"{path}, row {i}"))
    if not examples:
        raise DataError(f"{path} has no rows for domain {domain!r}; domains in the file: {sorted(labels)}")
    return examples


def render_prompt(example: Example, tokenizer) -> list[int]:
    """Token ids of the prompt as the model sees it (chat template for `messages`)."""
    if example.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"domain {example.domain!r} has chat 'messages' but the tokenizer has no chat template")
        out = tokenizer.apply_chat_template(list(example.messages), add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return list(ids)
    return list(tokenizer(example.prompt)["input_ids"])
