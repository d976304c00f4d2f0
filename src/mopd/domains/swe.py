"""`swe`: a SWE-shaped agentic domain small enough for a 135M model.

Each task is a short Python file, `solution.py`, with one planted bug, and its unit tests
(`mopd.domains.swe_tasks`). The model has three tools, called in the plain-text format
(docs/agentic.md; SmolLM2's chat template has no tool support, so the tools are listed in a
system message and observations come back as `obs:` user messages):

    call:view()                     solution.py with numbered lines (view(test_solution.py): the tests)
    call:edit(4: for i in range(1, n + 1):)   replace line 4 (its indentation is kept)
    call:edit(b, a => a, b)         or replace the first occurrence of a string
    call:run_tests()                run the tests in the sandbox, show the summary

and a turn without a tool call ends the episode. The reward is 1 when every test passes on
the final file, 0 otherwise: the environment re-runs the pristine tests itself once the
episode is over, whatever the model said or ran. The model's code only ever runs in the
sandbox (`mopd.verifiers.sandbox_tests.run_tests`), never in the training process, and no tool
can reach the tests: `edit` writes `solution.py` only, and the tests that decide the reward
are copied fresh into a sandbox of their own.
"""

from __future__ import annotations

import re

from mopd.domains.base import Example
from mopd.verifiers.sandbox_tests import run_tests
from mopd.domains.swe_tasks import Task, split_tasks
from mopd.envs.base import EpisodeLimits, Opening
from mopd.envs.domain import EnvDomain
from mopd.envs.tools import Tool, ToolEnvironment

SOLUTION, TESTS = "solution.py", "test_solution.py"
MAX_FILE_CHARS = 2000  # an edit that grows the file past this is refused: output stays small
_LINE_EDIT = re.compile(r"^(\d+)\s*:(.*)$", re.DOTALL)

PROMPT = ("solution.py has a bug: {function} should return {doc}. Fix it so that the tests in "
          "test_solution.py pass. Look at the file with call:view(), replace line N with "
          "call:edit(N: NEW CODE), check with call:run_tests(), then say done.")


class SWEEnvironment(ToolEnvironment):
    """One episode: the task's buggy file behind `view`, `edit` and `run_tests` (module docstring)."""

    def __init__(self, code: str, tests: str, test_timeout_s: float = 10.0, isolation: str | None = None):
        super().__init__(tools=[
            Tool("view", self.view, f"show {SOLUTION} with line numbers (or the tests: view({TESTS}))",
                 {"type": "object", "properties": {"file": {"type": "string"}}, "required": []}),
            Tool("edit", self.edit, "N: CODE replaces line N with CODE; OLD => NEW replaces the text OLD"),
            Tool("run_tests", self.run_tests, "run the tests and show which pass",
                 {"type": "object", "properties": {}, "required": []}),
        ], tool_timeout_s=test_timeout_s + 10.0, max_output_chars=2000)
        self.original, self.code, self.tests = code, code, tests
        self.test_timeout_s, self.isolation = test_timeout_s, isolation

    def opening(self, example: Example) -> Opening:
        return Opening(messages=example.messages, tools=tuple(t.spec() for t in self.tools))

    def reset(self, example: Example) -> Opening:
        self.code = self.original
        return super().reset(example)

    def view(self, file: str = SOLUTION) -> str:
        name = file.strip().strip("'\"") or SOLUTION
        if name == TESTS:
            return self.tests
        if name != SOLUTION:
            raise ValueError(f"no file {name!r}; files: {SOLUTION}, {TESTS}")
        return "\n".join(f"{i}: {line}" for i, line in enumerate(self.code.splitlines(), 1))

    def edit(self, change: str) -> str:
        m = _LINE_EDIT.match(change.strip())
        if m is not None:
            new = self._replace_line(int(m.group(1)), m.group(2).strip())
        elif " => " in change:
            old, _, repl = change.strip().partition(" => ")
            if not old or old not in self.code:
                raise ValueError(f"{old!r} is not in {SOLUTION}")
            new = self.code.replace(old, repl, 1)
        else:
            raise ValueError("edit takes N: CODE (replace line N) or OLD => NEW (replace text)")
        if len(new) > MAX_FILE_CHARS:
            raise ValueError(f"{SOLUTION} would grow past {MAX_FILE_CHARS} characters")
        self.code = new
        return "edited; " + self.view()

    def _replace_line(self, n: int, code: str) -> str:
        lines = self.code.splitlines()
        if not 1 <= n <= len(lines):
            raise ValueError(f"{SOLUTION} has lines 1 to {len(lines)}, not {n}")
        old = lines[n - 1]
        # The plain-text call strips its argument, and a small model rarely gets indentation
        # right: the replaced line keeps the indentation of the line it replaces.
        indent = old[: len(old) - len(old.lstrip())]
        lines[n - 1: n] = [indent + code] if code else []
        return "".join(f"{line}\n" for line in lines)

    def run_tests(self) -> str:
        return self._report().summary()

    def _report(self):
        return run_tests({SOLUTION: self.code}, {TESTS: self.tests}, timeout_s=self.test_timeout_s,
                         isolation=self.isolation)

    def reward(self) -> float:
        """1 when every pristine test passes on the final file, however the episode ended."""
        return 1.0 if self._report().all_passed else 0.0


def task_example(name: str, task: Task) -> Example:
    prompt = PROMPT.format(function=task.function, doc=task.doc)
    return Example(domain=name, messages=({"role": "user", "content": prompt},), answer=task.fixed_line.strip(),
                   meta={"code": task.code, "tests": task.tests(), "line": task.line,
                         "fix": task.fixed_line.strip(), "bug": task.bug, "function": task.function})


def demonstration(example: Example) -> list[str]:
    """A correct episode: look, fix the line, check, stop."""
    m = example.meta
    return ["call:view()", f"call:edit({m['line']}: {m['fix']})", "call:run_tests()", "done"]


class SWEDomain(EnvDomain):
    def __init__(self, name: str = "swe", seed: int = 0, n_train: int = 120, n_eval: int = 40, max_turns: int = 5,
                 max_tokens: int = 768, max_observation_tokens: int = 160, test_timeout_s: float = 10.0,
                 isolation: str | None = None) -> None:
        train, eval_ = split_tasks(seed, n_train, n_eval, f"domain {name!r}")
        self.test_timeout_s, self.isolation = test_timeout_s, isolation
        limits = EpisodeLimits(max_turns=max_turns, max_tokens=max_tokens,
                               max_observation_tokens=max_observation_tokens, step_timeout_s=test_timeout_s + 20.0)
        super().__init__(name, [task_example(name, t) for t in train], [task_example(name, t) for t in eval_],
                         self._environment, limits, demonstration)

    def _environment(self, example: Example) -> SWEEnvironment:
        return SWEEnvironment(example.meta["code"], example.meta["tests"], self.test_timeout_s, self.isolation)
