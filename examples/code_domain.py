"""A code domain for `mopd`: the model writes a Python program, the verifier runs it on tests.

Use it in a config with `prompts: {builtin: "python:examples/code_domain.py"}` (path relative to
where mopd runs, or absolute). The generated program runs in a sandboxed subprocess
(`mopd.verifiers.sandbox.run_python`: time and memory limits, no inherited environment), never in
the training process; the reward is the share of tests whose output matches.
"""

from mopd.verifiers.sandbox import run_python

name = "code"

TASKS = [
    ("Write a Python program that reads two integers from one line and prints their sum.",
     [("3 4\n", "7"), ("-2 10\n", "8")]),
    ("Write a Python program that reads a line and prints it reversed.",
     [("abc\n", "cba"), ("mopd\n", "dpom")]),
    ("Write a Python program that reads an integer n and prints n factorial.",
     [("5\n", "120"), ("0\n", "1")]),
    ("Write a Python program that reads words on one line and prints them sorted, space separated.",
     [("b a c\n", "a b c"), ("pear fig\n", "fig pear")]),
]


def _rows(tasks):
    return [{"messages": [{"role": "user", "content": q}], "answer": repr(tests)} for q, tests in tasks]


def train_examples():
    return _rows(TASKS[:3])


def eval_examples():
    return _rows(TASKS[3:])


def reward(completion, example):
    import ast

    code = completion.split("```python")[-1].split("```")[0] if "```" in completion else completion
    tests = ast.literal_eval(example.answer)
    passed = 0
    for stdin, expected in tests:
        res = run_python(code, stdin=stdin, timeout_s=2, memory_mb=256)
        passed += res.ok and res.stdout.strip() == expected
    return passed / len(tests)
