"""Run generated Python code for a verifier: in a subprocess, with limits, isolated where it can be.

Generated code never runs in the training process. The child gets a time limit (wall clock,
enforced here, plus a CPU-time rlimit), an address-space limit, a cap on the bytes it may
write, a cap on its processes, no core dumps, an empty working directory, and an environment
without the parent's variables (so API keys for remote teachers are not visible to it).

Under bubblewrap (the default wherever it runs, see `mopd.verifiers.isolation` and
docs/sandbox.md) it also has no network, no view of other processes, and a filesystem with only
the interpreter, the standard library and its own scratch directory (writable; all else
read-only). Without bubblewrap it falls back to a plain subprocess with one warning naming what
is not isolated, or refuses under `MOPD_SANDBOX=required`.

    from mopd.verifiers.sandbox import run_python
    res = run_python(program, stdin="3 4\\n", timeout_s=5, memory_mb=256)
    reward = float(res.ok and res.stdout.strip() == "7")

For programs checked by unit tests, `mopd.verifiers.sandbox_tests.run_tests`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mopd.verifiers import proclimit
from mopd.verifiers.isolation import Backend, clean_env, select_backend

# Runs in the child before the program: the limits are in place before any of it executes,
# and soft = hard, so the code cannot raise them again. (Set here rather than in preexec_fn,
# which is unsafe in a process with threads, such as a trainer running verifier threads.)
_BOOT = """\
import resource, runpy, sys
mem, cpu, fsize, nproc = (int(x) for x in sys.argv[1:5])
for kind, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                    (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(kind, (value, value))
if nproc:
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
sys.argv = sys.argv[5:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass
class SandboxResult:
    returncode: int | None  # None when killed at the time limit
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def out_of_memory(self) -> bool:
        return "MemoryError" in self.stderr


@dataclass
class Limits:
    timeout_s: float = 5.0
    memory_mb: int = 256
    max_output_bytes: int = 1 << 20
    max_processes: int = 64  # threads count as processes


def run_python(code: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 256,
               max_output_bytes: int = 1 << 20, *, max_processes: int = 64,
               isolation: str | None = None) -> SandboxResult:
    """Run `code` as a Python program in a fresh interpreter and return what it printed.

    isolation: "auto" (default, or $MOPD_SANDBOX), "required" or "none"; see docs/sandbox.md."""
    backend = select_backend(isolation)
    limits = Limits(timeout_s, memory_mb, max_output_bytes, max_processes)
    with tempfile.TemporaryDirectory(prefix="mopd-sandbox-") as tmp:
        d = Path(tmp)
        scratch = make_scratch(d / "work")
        (scratch / "main.py").write_text(code)
        (d / "stdin").write_text(stdin)
        # Output goes to files so that RLIMIT_FSIZE caps it: a print loop cannot fill our memory.
        # They are outside the scratch directory, where the program cannot reach them.
        with open(d / "stdin") as fin, open(d / "stdout", "w") as fout, open(d / "stderr", "w") as ferr:
            with Sandboxed(backend, scratch, ["main.py"], limits, stdin=fin, stdout=fout, stderr=ferr) as p:
                timed_out = p.wait(time.monotonic() + timeout_s)
        read = lambda name: (d / name).read_bytes()[:max_output_bytes].decode("utf-8", "replace")  # noqa: E731
        return SandboxResult(None if timed_out else p.returncode, read("stdout"), read("stderr"), timed_out)


def make_scratch(path: Path) -> Path:
    """An empty directory for one sandboxed program. (Its uid inside bwrap maps to ours outside,
    so ours alone may write it.)"""
    path.mkdir(mode=0o700)
    return path


class Sandboxed:
    """One program started in the sandbox: `script` (a path relative to `scratch`) and its args.

    A context manager: on exit everything it started is killed and its cgroup removed."""

    def __init__(self, backend: Backend, scratch: Path, script: list[str], limits: Limits, *,
                 stdin: IO | int | None, stdout: IO | int | None, stderr: IO | int | None,
                 pass_fds: tuple[int, ...] = ()):
        root = backend.root(scratch)
        # RLIMIT_NPROC counts all the user's processes: inside a user namespace (bwrap, unshare)
        # only the sandbox's; in a plain subprocess also the trainer's threads, so not set there.
        nproc = 0 if backend.name == "none" else limits.max_processes
        argv = [backend.python(), "-I", "-S", "-c", _BOOT, str(limits.memory_mb << 20),
                str(int(limits.timeout_s) + 1), str(limits.max_output_bytes), str(nproc),
                f"{root}/{script[0]}", *script[1:]]
        self.cgroup = proclimit.create(limits.max_processes + 4)  # + the sandbox's own init etc.
        if self.cgroup is None and (nproc == 0 or os.geteuid() == 0):
            proclimit.warn_unlimited(backend.name)
        try:
            self.proc = subprocess.Popen(
                proclimit.wrap(backend.wrap(argv, scratch), self.cgroup), stdin=stdin, stdout=stdout,
                stderr=stderr, cwd=scratch, env=clean_env(), pass_fds=pass_fds,
                start_new_session=True,  # its own process group: children it spawns die with it
            )
        except BaseException:
            proclimit.remove(self.cgroup)
            raise

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait(self, deadline: float) -> bool:
        """Wait until it exits or the deadline passes (then kill it); True if it timed out."""
        remaining = max(0.0, deadline - time.monotonic())
        try:  # woken the moment it exits: Popen.wait(timeout) polls, up to 50 ms late per run
            pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            try:
                select.select([pidfd], [], [], remaining)
            finally:
                os.close(pidfd)
            remaining = 0.0
        try:
            self.proc.wait(timeout=remaining)
            return False
        except subprocess.TimeoutExpired:
            self.kill()
            return True

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self) -> Sandboxed:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.kill()
        proclimit.remove(self.cgroup)
