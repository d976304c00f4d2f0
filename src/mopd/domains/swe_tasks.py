"""The tasks of the `swe` domain: a short Python function with one planted bug, and its tests.

Five bug families (an off-by-one range, a wrong comparison, a wrong return, swapped
arguments, an off-by-one index), each over four function names and 18 constants: 360
distinct tasks, shuffled by a seed into disjoint eval and train splits. The bug is always
on one line, so one `edit` fixes it; the tests' expected values come from running the
correct function here (it is our code, not the model's), so a task's tests pass on the fix
and fail on the bug by construction (checked in tests/unit/test_swe_domain.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CONSTANTS = range(2, 20)


@dataclass(frozen=True)
class Task:
    function: str
    doc: str  # what the function should do, said in the prompt
    bug: str  # the family
    correct: str  # the fixed file
    line: int  # 1-based number of the buggy line
    buggy_line: str
    calls: tuple[str, ...]  # argument lists the tests call the function with

    @property
    def fixed_line(self) -> str:
        return self.correct.splitlines()[self.line - 1]

    @property
    def code(self) -> str:
        """The file the model gets: the correct one with the buggy line in place of the fix."""
        lines = self.correct.splitlines()
        lines[self.line - 1] = self.buggy_line
        return "\n".join(lines) + "\n"

    def tests(self) -> str:
        """`test_solution.py`: one test per call, its expected value from the correct code."""
        scope: dict = {}
        exec(compile(self.correct, "solution.py", "exec"), scope)  # noqa: S102 - our own generated code
        out = [f"from solution import {self.function}", ""]
        for i, args in enumerate(self.calls, 1):
            want = scope[self.function](*eval(f"({args},)"))  # noqa: S307 - literals we wrote
            call = f"{self.function}({args})"
            out += ["", f"def test_{i}():", f"    assert {call} == {want!r}, \"{call} should be {want!r}\"", ""]
        return "\n".join(out).rstrip() + "\n"


def _range_sum(name: str, k: int) -> Task:
    src = (f"def {name}(n):\n    \"\"\"The sum of i * {k} for i from 1 to n.\"\"\"\n    total = 0\n"
           f"    for i in range(1, n + 1):\n        total += i * {k}\n    return total\n")
    return Task(name, f"the sum of i * {k} for i from 1 to n", "off_by_one_range", src, 4,
                "    for i in range(1, n):", ("1", "3", "5"))


def _comparison(name: str, k: int) -> Task:
    src = (f"def {name}(xs):\n    \"\"\"How many values in xs are greater than {k}.\"\"\"\n    count = 0\n"
           f"    for x in xs:\n        if x > {k}:\n            count += 1\n    return count\n")
    return Task(name, f"how many values in xs are greater than {k}", "wrong_comparison", src, 5,
                f"        if x < {k}:", (f"[{k - 1}, {k}, {k + 1}, {k + 2}]", f"[{k + 5}]", "[]"))


def _wrong_return(name: str, k: int) -> Task:
    src = (f"def {name}(a, b):\n    \"\"\"The larger of a and b, plus {k}.\"\"\"\n    if a > b:\n"
           f"        return a + {k}\n    return b + {k}\n")
    return Task(name, f"the larger of a and b, plus {k}", "wrong_return", src, 5,
                f"    return a + {k}", ("1, 5", "7, 2", "3, 3"))


def _swapped(name: str, k: int) -> Task:
    src = (f"def _times_diff(x, y):\n    return (x - y) * {k}\n\n\n"
           f"def {name}(a, b):\n    \"\"\"a minus b, times {k}.\"\"\"\n    return _times_diff(a, b)\n")
    return Task(name, f"a minus b, times {k}", "swapped_arguments", src, 7,
                "    return _times_diff(b, a)", ("5, 2", "1, 4", f"{k}, 1"))


def _index(name: str, k: int) -> Task:
    src = (f"def {name}(xs):\n    \"\"\"The item {k} places from the end of xs (1 is the last one).\"\"\"\n"
           f"    return xs[len(xs) - {k}]\n")
    items = ", ".join(str(10 + i) for i in range(k + 3))
    return Task(name, f"the item {k} places from the end of xs (1 is the last one)", "off_by_one_index", src, 3,
                f"    return xs[len(xs) - {k} + 1]", (f"[{items}]", f"list(range({k}))", f"list(range({k + 1}))"))


FAMILIES = {
    _range_sum: ("sum_upto", "series_total", "add_multiples", "running_sum"),
    _comparison: ("count_above", "num_greater", "how_many_over", "tally_big"),
    _wrong_return: ("larger_plus", "max_shifted", "bigger_plus", "top_plus"),
    _swapped: ("diff_times", "gap_scaled", "minus_times", "scaled_gap"),
    _index: ("from_end", "nth_last", "back_item", "pick_from_end"),
}


def all_tasks() -> list[Task]:
    return [make(name, k) for make, names in FAMILIES.items() for name in names for k in CONSTANTS]


def split_tasks(seed: int, n_train: int, n_eval: int, what: str) -> tuple[list[Task], list[Task]]:
    """Disjoint (train, eval) tasks; the eval split is drawn first so it does not move with n_train."""
    tasks = all_tasks()
    if n_train + n_eval > len(tasks):
        raise ValueError(f"{what}: {n_train} train + {n_eval} eval tasks requested, only {len(tasks)} exist")
    random.Random(seed).shuffle(tasks)
    return tasks[n_eval:n_eval + n_train], tasks[:n_eval]
