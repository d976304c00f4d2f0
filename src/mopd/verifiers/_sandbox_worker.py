"""Runs in the model's sandbox for `run_tests`: imports the model's modules and answers calls.

Standard library only (it runs under the base interpreter with -I -S). Requests come one JSON
line at a time on stdin, answers go out on stdout; both are moved to private descriptors first,
so the model's prints land on stderr. Nothing here is trusted: the test runner, in another
sandbox, only ever receives plain values (parsed with ast.literal_eval), never objects.
"""

import ast
import importlib
import json
import os
import sys

_PLAIN = "only plain values (numbers, strings, bytes, None, lists, tuples, dicts, sets) can be returned to the tests"


def _encode(value):
    text = repr(value)
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise TypeError(f"{type(value).__name__} value: {_PLAIN}") from None
    return text


def _answer(msg):
    obj = getattr(importlib.import_module(msg["module"]), msg["name"])
    if msg["op"] == "get":
        return {"callable": True} if callable(obj) else {"value": _encode(obj)}
    args, kwargs = ast.literal_eval(msg["args"]), ast.literal_eval(msg["kwargs"])
    return {"value": _encode(obj(*args, **kwargs))}


def main():
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    sys.path.insert(0, os.getcwd())  # the model's files
    for line in requests:
        msg = json.loads(line)
        try:
            out = _answer(msg)
        except (Exception, SystemExit) as e:  # reported to the test that made the call
            out = {"error": type(e).__name__, "message": str(e)[:2000]}
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps({"id": msg["id"], **out}) + "\n")
        answers.flush()


main()
