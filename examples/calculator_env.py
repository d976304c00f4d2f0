"""An agentic domain in one file: multiply two numbers with a calculator tool.

Use it in a config with `prompts: {builtin: "python:examples/calculator_env.py"}` (path relative
to where mopd runs, or absolute). A tiny char-level model cannot multiply two 2-digit numbers
in its head, but it can learn to ask the tool and copy the result (docs/agentic.md):

    mul:37*58=                prompt
    call:calc(37*58)<eos>     model turn: a plain-text tool call
    \nobs:2146\n              observation
    2146<eos>                 model turn: the answer (reward 1)

The file defines `environment(example)`, `train_examples()`, `eval_examples()`, and optionally
`limits` and `demonstration(example)` (the turns of a correct episode, used by SFT).
"""

import random

from mopd.envs.tools import Tool, ToolEnvironment

limits = {"max_turns": 3, "max_tokens": 96, "max_observation_tokens": 16, "step_timeout_s": 10.0}


def _rows(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": f"mul:{a}*{b}=", "answer": str(a * b)})
    return rows


def train_examples():
    return _rows(0, 400)


def eval_examples():
    return _rows(1, 50)


def _calc(expression: str) -> str:
    a, op, b = expression.partition("*")
    if not op:
        raise ValueError("the calculator multiplies: A*B")
    return str(int(a) * int(b))


class CalculatorEnv(ToolEnvironment):
    def __init__(self):
        super().__init__(tools=[Tool("calc", _calc, "the product A*B of two integers")], tool_timeout_s=2.0)

    def score(self, final: str) -> float:
        return float(final.strip() == self.example.answer)


def environment(example):
    return CalculatorEnv()


def demonstration(example):
    question = example.prompt[len("mul:"):-1]
    return [f"call:calc({question})", example.answer]
