"""Run a domain's verifier on one sample without letting it break or stall the run.

A verifier bug on one sample must cost that sample its reward, never the run. Two isolations:

- "thread" (default, cheap): the call runs in a daemon thread that is abandoned after the
  timeout. It cannot stop a verifier stuck inside C code, which keeps its core busy.
- "process": the call runs in a forked child that is killed at the timeout, so nothing of a
  hung or crashed verifier outlives it. It costs a fork per sample (a few ms).

Verifiers that execute generated code should also use `mopd.verifiers.sandbox.run_python`,
whose subprocess has its own time and memory limits.
"""

from __future__ import annotations

import faulthandler
import logging
import math
import multiprocessing as mp
import threading
from typing import Callable, Literal

from mopd.domains.base import Example

log = logging.getLogger(__name__)
Verifier = Callable[[str, Example], float]
Isolation = Literal["thread", "process"]
DEFAULT_VERIFIER_TIMEOUT_S = 30.0


def _call(verifier: Verifier, text: str, example: Example) -> dict:
    try:
        return {"value": float(verifier(text, example))}
    except BaseException as e:  # noqa: BLE001 - SystemExit from user code included
        return {"error": repr(e)}


def _in_thread(verifier: Verifier, text: str, example: Example, timeout_s: float) -> dict | None:
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(_call(verifier, text, example)),
                              name=f"verifier-{example.domain}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return None if worker.is_alive() else box


def _child(conn, verifier: Verifier, text: str, example: Example) -> None:
    faulthandler.disable()  # a crash here is reported by the parent, not dumped as the trainer's
    conn.send(_call(verifier, text, example))
    conn.close()


def _in_process(verifier: Verifier, text: str, example: Example, timeout_s: float) -> dict | None:
    # fork: the verifier (often a closure or bound method) needs no pickling.
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, verifier, text, example), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
            return None if proc.is_alive() else {"error": f"verifier process died (exit code {proc.exitcode})"}
        return recv.recv()
    except EOFError:
        proc.join(1.0)
        return {"error": f"verifier process died (exit code {proc.exitcode})"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()


def safe_reward(verifier: Verifier, text: str, example: Example,
                timeout_s: float | None = DEFAULT_VERIFIER_TIMEOUT_S, isolation: Isolation = "thread") -> float:
    """The verifier's reward, or 0 (with a warning) when it raises, returns a non-number or hangs."""
    if timeout_s is None:
        box = _call(verifier, text, example)
    elif isolation == "process":
        box = _in_process(verifier, text, example, timeout_s)
    else:
        box = _in_thread(verifier, text, example, timeout_s)
    if box is None:
        log.warning("verifier of domain %s did not finish within %.3gs; reward 0 "
                    "(raise verifier.timeout_s if it is just slow)", example.domain, timeout_s)
        return 0.0
    if "error" in box:
        log.warning("verifier of domain %s raised %s; reward 0", example.domain, box["error"])
        return 0.0
    if not math.isfinite(box["value"]):
        log.warning("verifier of domain %s returned %r; reward 0", example.domain, box["value"])
        return 0.0
    return box["value"]
