"""Verifiers and user code: a verifier that raises, hangs or returns NaN gives that sample
reward 0 and cannot stall the run; generated code runs in a limited subprocess."""

import logging
import os
import time
from pathlib import Path

from faultkit import run_data

from mopd.build import build_run
from mopd.config.load import load_config
from mopd.config.schema import RunConfig
from mopd.domains.base import Example
from mopd.domains.registry import build_domain
from mopd.verifiers.sandbox import run_python
from mopd.training.loop import run_onpolicy
from mopd.training.overlap import step_generator
from mopd.rollout.sample import collect_rollouts
from mopd.verifiers.safe_reward import safe_reward

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# A verifier that misbehaves by prompt: raises on one, hangs on another, NaN on a third.
FLAKY = '''
import threading
def train_examples(): return [{"prompt": p} for p in ("raise", "hang", "nan", "fine")]
def eval_examples(): return train_examples()
def reward(completion, example):
    if example.prompt == "raise": raise ZeroDivisionError("verifier bug")
    if example.prompt == "hang": threading.Event().wait(60)
    if example.prompt == "nan": return float("nan")
    return 1.0
'''


def test_flaky_verifier_gives_reward_0_and_the_run_goes_on(tmp_path, caplog):
    (tmp_path / "flaky.py").write_text(FLAKY)
    data = run_data(tmp_path / "run", {"kind": "self"}, steps=2)
    data["domains"] = [{"name": "flaky", "teacher": "t", "prompts": {"builtin": f"python:{tmp_path / 'flaky.py'}"}}]
    data["verifier"] = {"timeout_s": 0.3}
    run = build_run(load_config(None, RunConfig, data=data))
    examples = run.sampler.next_batch(4)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, "mopd.training"):
        rollouts = collect_rollouts(run.engine, run.tokenizer, examples, run.sampling, run.verifiers,
                                    step_generator(0, 0), run.verification)
    assert time.perf_counter() - t0 < 5  # not 60 s: the hanging call is abandoned
    assert {r.example.prompt: r.reward for r in rollouts} == {"raise": 0.0, "hang": 0.0, "nan": 0.0, "fine": 1.0}
    assert "raised ZeroDivisionError('verifier bug'); reward 0" in caplog.text
    assert "did not finish within 0.3s; reward 0" in caplog.text and "returned nan" in caplog.text
    last = run_onpolicy(run)  # whole steps with the same verifier finish too
    assert run.step == 2 and last["reward/all"] == 0.25


def test_safe_reward_without_a_timeout_and_with_system_exit():
    ex = Example(domain="d", prompt="p")
    assert safe_reward(lambda c, e: 0.5, "x", ex, timeout_s=None) == 0.5
    assert safe_reward(lambda c, e: exit(3), "x", ex) == 0.0  # user code calling exit() cannot end the run


def _stuck_in_c(pid_file: Path):
    """A verifier that records its pid and then blocks inside libc, where no Python thread can be stopped."""
    def verifier(completion, example):
        import ctypes

        pid_file.write_text(str(os.getpid()))
        ctypes.CDLL(None).sleep(600)
        return 1.0
    return verifier


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_process_isolation_kills_a_verifier_stuck_in_c(tmp_path, caplog):
    ex = Example(domain="d", prompt="p")
    pid_file = tmp_path / "pid"
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, "mopd.training"):
        r = safe_reward(_stuck_in_c(pid_file), "x", ex, timeout_s=1.0, isolation="process")
    assert r == 0.0 and time.perf_counter() - t0 < 10
    assert "did not finish within 1s" in caplog.text
    pid = int(pid_file.read_text())
    assert pid != os.getpid()  # it ran in a child ...
    assert not _alive(pid)  # ... which is gone: nothing keeps burning a core


def test_process_isolation_returns_values_and_survives_crashes(caplog):
    import ctypes

    ex = Example(domain="d", prompt="p")
    assert safe_reward(lambda c, e: len(c) / 4, "abc", ex, timeout_s=5, isolation="process") == 0.75
    with caplog.at_level(logging.WARNING, "mopd.training"):
        assert safe_reward(lambda c, e: os._exit(7), "x", ex, timeout_s=5, isolation="process") == 0.0
        assert safe_reward(lambda c, e: ctypes.string_at(0), "x", ex, timeout_s=5, isolation="process") == 0.0
        assert safe_reward(lambda c, e: 1 / 0, "x", ex, timeout_s=5, isolation="process") == 0.0
    assert "exit code 7" in caplog.text  # the segfault is reported with its signal's exit code
    assert "ZeroDivisionError" in caplog.text


def test_sandbox_runs_code_in_another_process_with_stdin():
    res = run_python("import os\na, b = map(int, input().split())\nprint(a + b, os.getpid())", stdin="3 4\n")
    total, pid = res.stdout.split()
    assert res.ok and total == "7" and int(pid) != os.getpid()


def test_sandbox_time_limit_kills_the_program_and_its_children(tmp_path):
    code = ("import subprocess\n"
            "p = subprocess.Popen(['sleep', '60'])\n"
            f"open({str(tmp_path / 'child.pid')!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\n"
            "while True: pass\n")
    t0 = time.perf_counter()
    # A plain subprocess (it writes the child's pid where we can read it); the isolated run of the
    # same program is in test_sandbox_isolation.py.
    res = run_python(code, timeout_s=1, isolation="none")
    assert res.timed_out and not res.ok and res.returncode is None and res.stdout == "started\n"
    assert time.perf_counter() - t0 < 5
    status = Path(f"/proc/{(tmp_path / 'child.pid').read_text()}/status")
    time.sleep(0.2)
    assert not status.exists() or "(zombie)" in status.read_text()  # its child was killed as well


def test_sandbox_memory_and_output_limits():
    res = run_python("x = bytearray(2_000_000_000)\nprint('allocated')", memory_mb=200)
    assert not res.ok and res.out_of_memory and "allocated" not in res.stdout
    res = run_python("while True: print('y' * 1000)", timeout_s=10, max_output_bytes=50_000)
    assert not res.ok and not res.timed_out and len(res.stdout) == 50_000  # stopped by the size cap


def test_sandbox_sees_none_of_the_parents_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-in-parent")
    res = run_python("import os\nprint(sorted(os.environ))\nprint(os.environ.get('OPENAI_API_KEY'))")
    assert res.ok and "sk-secret" not in res.stdout and "OPENAI_API_KEY" not in res.stdout


def test_example_code_domain_rewards_through_the_sandbox():
    dom = build_domain("code", f"python:{EXAMPLES / 'code_domain.py'}")
    ex = dom.train_examples()[0]  # sum of two integers
    good = "Here you go:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert dom.reward(good, ex) == 1.0
    assert dom.reward("print(7)", ex) == 0.5  # passes one test of two
    assert dom.reward("raise SystemExit(input())", ex) == 0.0
    assert dom.reward("import sys; sys.exit(0)", ex) == 0.0  # exits "successfully", prints nothing
