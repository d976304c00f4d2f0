"""Run generated Python code for a code-domain verifier: in a subprocess, with limits.

Generated code never runs in the training process. The child gets a time limit (wall clock,
enforced here, plus a CPU-time rlimit), an address-space limit, a cap on the bytes it may
write, no core dumps, an empty working directory, and an environment without the parent's
variables (so API keys for remote teachers are not visible to it). This contains mistakes
and runaway programs; it is not a security boundary against hostile code (no network or
filesystem isolation), for which run mopd inside a container.

    from mopd.domains.sandbox import run_python
    res = run_python(program, stdin="3 4\\n", timeout_s=5, memory_mb=256)
    reward = float(res.ok and res.stdout.strip() == "7")
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs in the child before the user's code: the limits are in place before any of it executes,
# and soft = hard, so the code cannot raise them again. (Set here rather than in preexec_fn,
# which is unsafe in a process with threads, such as a trainer running verifier threads.)
_BOOT = """\
import resource, runpy, sys
mem, cpu, fsize = (int(x) for x in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.argv = [sys.argv[4]]
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


def run_python(code: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 256,
               max_output_bytes: int = 1 << 20) -> SandboxResult:
    """Run `code` as a Python program in a fresh interpreter and return what it printed."""
    with tempfile.TemporaryDirectory(prefix="mopd-sandbox-") as tmp:
        d = Path(tmp)
        (d / "main.py").write_text(code)
        (d / "boot.py").write_text(_BOOT)
        (d / "stdin").write_text(stdin)
        limits = [str(memory_mb << 20), str(int(timeout_s) + 1), str(max_output_bytes)]
        # Output goes to files so that RLIMIT_FSIZE caps it: a print loop cannot fill our memory.
        with open(d / "stdin") as fin, open(d / "stdout", "w") as fout, open(d / "stderr", "w") as ferr:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(d / "boot.py"), *limits, str(d / "main.py")],
                stdin=fin, stdout=fout, stderr=ferr, cwd=d, env=_clean_env(),
                start_new_session=True,  # its own process group: children it spawns die with it
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
        read = lambda name: (d / name).read_bytes()[:max_output_bytes].decode("utf-8", "replace")  # noqa: E731
        return SandboxResult(None if timed_out else proc.returncode, read("stdout"), read("stderr"), timed_out)


def _clean_env() -> dict[str, str]:
    # Nothing of ours is inherited: no API keys, no PYTHONPATH into the trainer's packages.
    return {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
