"""benchmarks/lockstep.py: setups in their own processes, stepped in turn, warm-up steps left out,
and a worker's failure reported with its reason."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import lockstep  # noqa: E402


def counting_entry(conn, fail_at=None):
    """A worker whose state counts its steps; it fails at step `fail_at`."""
    def step(state):
        state["n"] += 1
        if state["n"] == fail_at:
            raise ValueError(f"step {fail_at} broke")
        return {"tokens": 10 * state["n"], "pid": os.getpid()}

    lockstep.serve(conn, lambda: {"n": 0}, step, lambda state: {"steps_taken": state["n"]})


def test_setups_run_in_turn_in_their_own_processes_and_warm_up_is_not_measured():
    log = []
    out = lockstep.run_in_turn({"a": (counting_entry,), "b": (counting_entry,)}, warmup=1, steps=2, log=log.append)
    assert [line.split("]")[1].split(":")[0].strip() for line in log] == ["a", "b"] * 3  # A B A B A B
    assert [line.startswith("[warm-up") for line in log] == [True, True] + [False] * 4
    for name in "ab":
        steps = out[name]["steps"]
        assert [s["tokens"] for s in steps] == [20, 30]  # the first step was the warm-up
        assert all(s["step_s"] >= 0 and s["cpu_s"] >= 0 for s in steps)
        assert out[name]["done"]["steps_taken"] == 3 and out[name]["done"]["peak_rss_mib"] > 0
    pids = {out[n]["steps"][0]["pid"] for n in "ab"}
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_failing_worker_stops_the_run_with_its_reason():
    with pytest.raises(RuntimeError, match="b failed: ValueError: step 2 broke"):
        lockstep.run_in_turn({"a": (counting_entry,), "b": (counting_entry, 2)}, warmup=0, steps=3, log=lambda _: None)
