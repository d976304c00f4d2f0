"""Generated code runs isolated: no network, nothing outside its directory, tests it cannot touch.

End to end through `run_python` and `run_tests` (what test-running environments call). Most
checks run the same program once more with isolation="none" and see the leak happen, so they
prove the attack works where the sandbox is not. Under bubblewrap; skipped, with the reason, on
machines where it cannot run (`make venv` installs it where it can).
"""

import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mopd.verifiers import isolation, proclimit
from mopd.verifiers.isolation import IsolationUnavailable, available_backends
from mopd.verifiers.sandbox import run_python
from mopd.verifiers.sandbox_tests import run_tests

REPO = Path(__file__).resolve().parents[2]


def _need(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} cannot run here: {available_backends.reason}")


@pytest.fixture
def bwrap():
    _need("bwrap")


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    s.setblocking(False)
    yield s
    s.close()


def _accepted(s: socket.socket) -> bool:
    try:
        s.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def _connect(port: int, indent: str = "") -> str:
    lines = ["import socket", "try:", f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)",
             "    print('connected')", "except OSError as e:", "    print('blocked', type(e).__name__)"]
    return "".join(indent + line + "\n" for line in lines)


def test_code_cannot_connect_to_a_listener_on_localhost(bwrap, listener):
    port = listener.getsockname()[1]
    res = run_python(_connect(port))
    assert res.ok and res.stdout.startswith("blocked") and not _accepted(listener)
    tests = {"test_add.py": "from solution import add\ndef test_add():\n    assert add(1, 2) == 3\n"}
    report = run_tests({"solution.py": f"def add(a, b):\n{_connect(port, '    ')}    return a + b\n"}, tests)
    assert report.all_passed and "blocked" in report.output and not _accepted(listener)
    assert run_python(_connect(port), isolation="none").stdout == "connected\n" and _accepted(listener)


def test_unshare_fallback_still_has_no_network(listener, monkeypatch, caplog):
    _need("unshare")
    monkeypatch.setattr(available_backends, "cache", ("unshare",))
    isolation._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, "mopd.domains"):
        res = run_python(_connect(listener.getsockname()[1]))
    assert res.stdout.startswith("blocked") and not _accepted(listener)
    assert "not isolated from the filesystem" in caplog.text  # what unshare leaves open, said once


def test_code_cannot_see_files_outside_its_directory(bwrap, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    home = Path.home()
    paths = [secret, REPO / "pyproject.toml", Path(sys.prefix) / "pyvenv.cfg", Path("/etc/passwd")]
    paths += [p for p in home.iterdir() if not Path(sys.base_prefix).is_relative_to(p)][:3]  # ~/.bashrc...
    code = f"import os\nfor p in {[str(p) for p in paths]!r}:\n    print(p, os.path.exists(p))\n"
    res = run_python(code)
    assert res.ok and res.stdout.count(" False") == len(paths), res.stdout
    peek = (f"def peek():\n    try:\n        return open({str(secret)!r}).read()\n"
            "    except OSError as e:\n        return repr(e)\n")
    tests = {"test_peek.py": "from solution import peek\ndef test_peek():\n    assert peek() == 'hunter2'\n"}
    assert run_tests({"solution.py": peek}, tests).passed == 0  # the "test" passes only on a leak
    assert run_tests({"solution.py": peek}, tests, isolation="none").passed == 1


def test_code_cannot_write_outside_its_directory(bwrap, tmp_path):
    targets = [tmp_path / "pwned.txt", REPO / "pwned.txt", Path("/usr/pwned.txt")]
    private_tmp = Path(f"/tmp/{tmp_path.name}-{os.getpid()}.txt")  # its /tmp is its own
    writes = "for p in {!r}:\n    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n" \
             "    except OSError as e:\n        print('refused', p, type(e).__name__)\n"
    res = run_python(writes.format([str(p) for p in targets] + ["here.txt", str(private_tmp)]))
    assert res.stdout.count("refused") == 3 and res.stdout.count("wrote") == 2, res.stdout
    assert not any(p.exists() for p in targets) and not private_tmp.exists()
    run_python(writes.format([str(targets[0])]), isolation="none")
    assert targets[0].exists()  # without the sandbox the same write lands


def test_code_sees_no_other_process(bwrap):
    code = (f"import os\nprint(os.path.exists('/proc/{os.getpid()}'))\n"
            f"try:\n    os.kill({os.getpid()}, 0)\nexcept OSError as e:\n    print(type(e).__name__)\n"
            "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n")
    out = run_python(code).stdout.splitlines()
    assert out[:2] == ["False", "ProcessLookupError"] and max(json.loads(out[2])) < 10


def test_time_limit_kills_the_program_and_its_children_in_the_sandbox(bwrap):
    marker = "61.4142"  # an argument no other process on the machine has
    code = f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\nprint('started', flush=True)\nwhile True: pass\n"
    res = run_python(code, timeout_s=1)
    assert res.timed_out and res.stdout == "started\n"
    time.sleep(0.2)
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if _reads(p).endswith(f"sleep\0{marker}\0")]


def _reads(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


# A task: a sort function, one assert and one case read from a data file beside the tests.
TASK = {"test_sort.py": ("import json\nfrom solution import sort\n\ndef test_small():\n"
                         "    assert sort([3, 1, 2]) == [1, 2, 3]\n\ndef test_case_file():\n"
                         "    case = json.load(open('cases.json'))\n    assert sort(case['input']) == case['expected']\n"),
        "cases.json": json.dumps({"input": [5, 4], "expected": [4, 5]})}
WRONG = "def sort(xs):\n    return xs\n"
HACKS = {
    "edits its copy of the tests and cases": {
        "solution.py": WRONG, "test_sort.py": "def test_small():\n    pass\ndef test_case_file():\n    pass\n",
        "cases.json": json.dumps({"input": [5, 4], "expected": [5, 4]})},
    # Where a fallback puts the runner's copy of the tests (looked for there only: run without a
    # sandbox, a walk of "/" would rewrite every test file on the machine).
    "rewrites the runner's test and case files": {"solution.py": (
        f"import os\nfor root, dirs, names in os.walk({tempfile.gettempdir()!r}):\n"
        "    for n in names:\n        if 'mopd-tests-' in root and n in ('test_sort.py', 'cases.json'):\n"
        "            open(os.path.join(root, n), 'w').write('{\"input\": [], \"expected\": []}')\n" + WRONG)},
    "prints passes and exits 0": {"solution.py": (
        "import os\ndef sort(xs):\n    print('test_sort.py::test_small PASSED')\n"
        "    print(json.dumps({'file': 'test_sort.py', 'test': 'test_small', 'passed': True}))\n    os._exit(0)\n"
        "import json\n")},
    "returns a value equal to everything": {"solution.py": (
        "class Any(list):\n    def __eq__(self, other):\n        return True\ndef sort(xs):\n    return Any(xs)\n")},
    "patches assert machinery in its process": {"solution.py": (
        "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n" + WRONG)},
}


@pytest.mark.parametrize("hack", list(HACKS))
def test_rewriting_tests_or_expected_output_earns_nothing(bwrap, hack):
    report = run_tests(HACKS[hack], TASK, timeout_s=10)
    assert report.total == 2 and report.passed == 0, report.summary()


def test_a_correct_solution_passes_and_the_verdict_needs_the_sandbox(bwrap):
    report = run_tests({"solution.py": "def sort(xs):\n    return sorted(xs)\n"}, TASK)
    assert report.all_passed and report.fraction == 1.0, report.summary()
    hack = HACKS["rewrites the runner's test and case files"]
    assert run_tests(hack, TASK).passed == 0
    assert run_tests(hack, TASK, isolation="none").passed == 1  # the attack works without a sandbox


BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
HOG = "chunks = []\nwhile True:\n    chunks.append(bytearray(50_000_000))\n"


def _process_cap_holds() -> bool:
    group = proclimit.create(8)
    proclimit.remove(group)
    return group is not None or os.geteuid() != 0  # RLIMIT_NPROC does not bind root


def test_fork_bomb_and_memory_hog_are_stopped_and_the_trainer_goes_on(bwrap):
    if not _process_cap_holds():
        pytest.skip("running as root without a writable pids cgroup: no process cap to test")
    t0 = time.perf_counter()
    res = run_python(BOMB, timeout_s=2, max_processes=32)
    assert not res.ok and time.perf_counter() - t0 < 15
    res = run_python(HOG, memory_mb=200)
    assert not res.ok and res.out_of_memory
    tests = {"test_add.py": "from solution import add\ndef test_add():\n    assert add(1, 2) == 3\n"}
    report = run_tests({"solution.py": "def add(a, b):\n" + "".join("    " + ln + "\n" for ln in BOMB.splitlines())},
                       tests, timeout_s=3, max_processes=32)
    assert report.passed == 0 and report.timed_out
    report = run_tests({"solution.py": "def add(a, b):\n    x = bytearray(2_000_000_000)\n"}, tests, memory_mb=200)
    assert report.passed == 0 and "MemoryError" in report.summary()
    assert run_python("print('alive')").stdout == "alive\n"
    assert run_tests({"solution.py": "def add(a, b):\n    return a + b\n"}, tests).all_passed


@pytest.fixture
def no_tools(monkeypatch):
    """Neither bubblewrap nor unshare on PATH, as on a machine without them."""
    real = isolation._which
    monkeypatch.setattr(isolation, "_which", lambda name: None if name in ("bwrap", "unshare") else real(name))
    isolation.reset_detection()
    yield
    isolation.reset_detection()


def test_without_isolation_tools_one_warning_names_what_is_not_isolated(no_tools, monkeypatch, caplog):
    monkeypatch.delenv("MOPD_SANDBOX", raising=False)
    with caplog.at_level(logging.WARNING, "mopd.domains"):
        assert run_python("print(1)").stdout == "1\n" and run_python("print(2)").stdout == "2\n"
    warnings = [r.getMessage() for r in caplog.records if "not isolated" in r.getMessage()]
    assert len(warnings) == 1
    assert "not isolated from the network, the filesystem and other processes" in warnings[0]
    assert "bwrap: not installed" in warnings[0] and "MOPD_SANDBOX=required" in warnings[0]


def test_without_isolation_tools_required_refuses_and_none_is_quiet(no_tools, monkeypatch, caplog):
    monkeypatch.setenv("MOPD_SANDBOX", "required")
    with pytest.raises(IsolationUnavailable, match="bubblewrap cannot run here"):
        run_python("print(1)")
    with pytest.raises(IsolationUnavailable):
        run_tests({"solution.py": ""}, {"test_x.py": "def test_x():\n    pass\n"})
    monkeypatch.setenv("MOPD_SANDBOX", "none")
    with caplog.at_level(logging.WARNING, "mopd.domains"):
        assert run_python("print(1)").ok
    assert "not isolated" not in caplog.text
    with pytest.raises(ValueError, match="auto, required, none"):
        run_python("print(1)", isolation="strict")
