"""Several training setups, each in its own worker process, stepped in turn by the parent.

Each worker loads its setup, reports `ready`, then runs one training step per `step` order
and answers with that step's measurements; `stop` makes it report its peak memory and exit.
Only one worker computes at a time, so the setups never compete for the cores, and
interleaving them (A B C A B C ...) spreads whatever else runs on the machine evenly.
Separate processes also give each setup its own peak-memory figure.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback

import torch

from common import PeakRSS, median


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


class StepTimer:
    """Wall and CPU seconds of one step. CPU seconds (all threads of the process) are less
    disturbed by other work on a shared machine than wall seconds."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if _cuda_in_use():  # the step's GPU work is queued: wait for it before reading the clock
            torch.cuda.synchronize()
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def serve(conn, setup, step, finish=None) -> None:
    """Worker side: `setup()` returns a state; `step(state)` runs one step and returns a dict;
    `finish(state)`, after the last step, returns a dict for the final report."""
    try:
        state = setup()
        mem = PeakRSS()
        mem.reset()  # the peak of training, not of loading
        if _cuda_in_use():
            torch.cuda.reset_peak_memory_stats()
        conn.send(("ready", {"rss_after_load_mib": mem.current()}))
        while conn.recv() == "step":
            with StepTimer() as t:
                out = step(state)
            conn.send(("step", {"step_s": t.wall, "cpu_s": t.cpu, **out}))
        conn.send(("done", {**done_memory(mem), **(finish(state) if finish else {})}))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the run
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-4000:]}"))


def done_memory(mem: PeakRSS) -> dict:
    out = {"peak_rss_mib": mem.peak(), "lifetime_peak_rss_mib": mem.lifetime_peak()}
    if _cuda_in_use():
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class Worker:
    """Parent side of one worker process (spawned: vLLM and torch threads start clean)."""

    def __init__(self, name: str, entry, *args):
        ctx = mp.get_context("spawn")
        self.name, (self.conn, child) = name, ctx.Pipe()
        self.proc = ctx.Process(target=entry, args=(child, *args), name=f"bench-{name}", daemon=True)
        self.proc.start()
        self.ready: dict = {}

    def expect(self, kind: str, timeout_s: float = 1800) -> dict:
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"{self.name}: no answer in {timeout_s:.0f} s")
        try:
            got, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.name}: the worker died (exit code {self.proc.exitcode}); "
                               "out of memory?") from None
        if got == "error":
            raise RuntimeError(f"{self.name} failed: {payload}")
        if got != kind:
            raise RuntimeError(f"{self.name}: expected {kind!r}, got {got!r}")
        return payload

    def step(self) -> dict:
        self.conn.send("step")
        return self.expect("step")

    def stop(self) -> dict:
        self.conn.send("stop")
        out = self.expect("done")
        self.proc.join(60)
        return out

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(30)


def run_in_turn(specs: dict[str, tuple], warmup: int, steps: int, log=print) -> dict[str, dict]:
    """Start each worker (one at a time), step them in turn, return their steps and memory.

    `specs`: name -> (entry, *args) for `Worker`. Returns name -> {"steps", "ready", "done"}.
    """
    workers: dict[str, Worker] = {}
    steps_of: dict[str, list[dict]] = {n: [] for n in specs}
    try:
        for name, (entry, *args) in specs.items():  # load one at a time: no contention
            workers[name] = Worker(name, entry, *args)
            workers[name].ready = workers[name].expect("ready")
        for i in range(warmup + steps):
            for name, w in workers.items():
                s = w.step()
                tag = "warm-up" if i < warmup else "measured"
                log(f"[{tag} {i}] {name}: {s['step_s']:.2f} s wall, {s['cpu_s']:.2f} s CPU, "
                    f"{s.get('tokens', '?')} tokens")
                if i >= warmup:
                    steps_of[name].append(s)
        done = {n: w.stop() for n, w in workers.items()}
    finally:
        for w in workers.values():
            w.kill()
    return {n: {"steps": steps_of[n], "ready": workers[n].ready, "done": done[n]} for n in specs}


def medians(steps: list[dict], keys: list[str]) -> dict[str, float]:
    return {f"median_{k}": median([s[k] for s in steps if k in s]) for k in keys}
