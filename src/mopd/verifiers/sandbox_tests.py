"""Run a task's unit tests against model-written code, with a verdict the code cannot forge.

For test-running environments (a SWE-shaped domain: the model edits files, then the tests run):

    from mopd.verifiers.sandbox_tests import run_tests
    report = run_tests({"solution.py": model_code},
                       {"test_solution.py": "from solution import add\\n"
                                            "def test_add():\\n    assert add(2, 3) == 5\\n"})
    reward = report.fraction  # passed / total; report.summary() is feedback for the model

Two sandboxes per run (see docs/sandbox.md). The model's files are written fresh into one; its
code runs there, in a worker that answers calls. The tests are copied fresh into the other,
which the model's sandbox cannot see, and run by a runner where the model's modules are
stand-ins: `from solution import add` gives a function whose calls go to the worker with
literal arguments and return literal results. So:

- editing or deleting tests in the model's files changes nothing (they are not the ones run);
- writing an expected-output file, printing "PASSED", exiting with status 0, patching
  `assert` or the test runner all happen in the worker, which the verdict does not come from;
- a test counts as passed only when the runner reports it, and the total comes from parsing the
  pristine tests here, so tests that crash, hang or never run count as failed.

What tests can do: call the model's functions with plain values (numbers, strings, bytes, None,
lists, tuples, dicts, sets) and compare what comes back; exceptions the code raises come back as
the same built-in exception type. Objects, classes and in-place mutation of arguments do not
cross. The guarantee holds under bubblewrap; under a fallback (unshare or a plain subprocess)
the worker can reach the runner's files, so it is only as good as that fallback.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mopd.verifiers.isolation import select_backend
from mopd.verifiers.sandbox import Limits, Sandboxed, make_scratch

_HERE = Path(__file__).resolve().parent
_WORKER, _RUNNER = "_mopd_worker.py", "_mopd_runner.py"


@dataclass
class TestOutcome:
    file: str
    test: str
    passed: bool
    message: str = ""


@dataclass
class UnitTestReport:
    total: int  # test functions found in the pristine tests (outside the sandbox)
    outcomes: list[TestOutcome] = field(default_factory=list)
    output: str = ""  # what the model's code printed (stdout and stderr), capped
    log: str = ""  # what the tests printed, capped
    timed_out: bool = False

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def summary(self) -> str:
        lines = [f"{o.file}::{o.test} {'PASSED' if o.passed else 'FAILED ' + o.message}" for o in self.outcomes]
        if self.timed_out:
            lines.append("timed out: tests that had not finished count as failed")
        return "\n".join([*lines, f"{self.passed}/{self.total} passed"])


def run_tests(files: dict[str, str], tests: dict[str, str], *, timeout_s: float = 10.0,
              memory_mb: int = 512, max_output_bytes: int = 1 << 20, max_processes: int = 64,
              modules: list[str] | None = None, isolation: str | None = None) -> UnitTestReport:
    """Run the test functions (`def test...():` at top level) of `tests` against `files`.

    files: the model's files (relative path -> text), importable as modules by the tests.
    tests: the task's test files (relative path -> text); only the `.py` ones named test* run.
    modules: module names the tests import from the model (default: its top-level .py files)."""
    backend = select_backend(isolation)
    expected = {(PurePosixPath(p).name, n) for p, src in tests.items() if _is_test_file(p) for n in _test_names(src)}
    if modules is None:
        modules = sorted({PurePosixPath(p).stem for p in files if "/" not in p and p.endswith(".py")})
    shadowed = set(sys.stdlib_module_names) | {PurePosixPath(p).stem for p in tests}
    modules = [m for m in modules if m not in shadowed and m.isidentifier()]
    limits = Limits(timeout_s, memory_mb, max_output_bytes, max_processes)
    with tempfile.TemporaryDirectory(prefix="mopd-tests-") as tmp:
        d = Path(tmp)
        work, tdir = _write(make_scratch(d / "work"), files), _write(make_scratch(d / "tests"), tests)
        (work / _WORKER).write_text((_HERE / "_sandbox_worker.py").read_text())
        (tdir / _RUNNER).write_text((_HERE / "_sandbox_runner.py").read_text())
        test_files = sorted(p for p in tests if _is_test_file(p))
        timed_out = _run_pair(backend, work, tdir, limits, json.dumps(modules), test_files, d)
        outcomes = _outcomes(d / "results", expected)
        read = lambda name: (d / name).read_bytes()[:max_output_bytes].decode("utf-8", "replace")  # noqa: E731
        return UnitTestReport(len(expected), outcomes, read("worker.log"), read("runner.log"), timed_out)


def _run_pair(backend, work: Path, tdir: Path, limits: Limits, modules: str, test_files: list[str],
              d: Path) -> bool:
    """Start the worker and the runner, joined by two pipes; wait for the runner. True on timeout."""
    req_r, req_w = os.pipe()
    ans_r, ans_w = os.pipe()
    mine = {req_r, req_w, ans_r, ans_w}  # closed here once the child that needs each has it
    try:
        with open(d / "results", "w") as res, open(d / "runner.log", "w") as rlog, \
                open(d / "worker.log", "w") as wlog, \
                Sandboxed(backend, work, [_WORKER], limits, stdin=req_r, stdout=ans_w, stderr=wlog) as worker:
            _close(mine, req_r, ans_w)  # so the worker sees EOF when the runner goes
            argv = [_RUNNER, str(req_w), str(ans_r), modules, *test_files]
            with Sandboxed(backend, tdir, argv, limits, stdin=subprocess.DEVNULL, stdout=res, stderr=rlog,
                           pass_fds=(req_w, ans_r)) as runner:
                _close(mine, req_w, ans_r)
                timed_out = runner.wait(time.monotonic() + limits.timeout_s)
            worker.wait(time.monotonic() + 1.0)
    finally:
        _close(mine, *list(mine))
    return timed_out


def _close(still_open: set[int], *fds: int) -> None:
    for fd in fds:
        if fd in still_open:
            still_open.discard(fd)
            os.close(fd)


def _outcomes(results: Path, expected: set[tuple[str, str]]) -> list[TestOutcome]:
    # Only tests found in the pristine sources count, once each; a module that failed to import
    # is reported (as a failure of "<module>") for feedback but adds nothing to the passes.
    seen, outcomes = set(), []
    for line in results.read_text(errors="replace").splitlines():
        try:
            r = TestOutcome(**json.loads(line))
        except (ValueError, TypeError):
            continue
        key = (r.file, r.test)
        if key in seen or (key not in expected and r.passed):
            continue
        seen.add(key)
        outcomes.append(r)
    return outcomes


def _is_test_file(path: str) -> bool:
    p = PurePosixPath(path)
    return p.suffix == ".py" and p.name.startswith("test")


def _test_names(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise ValueError(f"file paths must be relative and stay inside the directory: {rel!r}")
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text(text)
    return root
