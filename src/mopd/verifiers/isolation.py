"""Which isolation generated code runs under, and the command line that puts it there.

Backends, best first (chosen by detection; `MOPD_SANDBOX` or the `isolation` argument picks the
policy):

- `bwrap` (bubblewrap): own user, network, PID, IPC and UTS namespaces; a filesystem holding only
  /usr (with /bin, /lib... as on the host), the base interpreter's prefix and the ld.so cache,
  read-only, plus the task's scratch directory, a private /tmp, /proc and a minimal /dev.
- `unshare` (util-linux): own user, network, PID, IPC and UTS namespaces; the filesystem is the
  host's, so files the trainer can read are readable.
- `none`: a plain subprocess (the limits only).

Policies: `auto` (the best available; one warning naming what is not isolated when that is not
bwrap), `required` (bwrap or an error), `none` (a plain subprocess, no warning).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "MOPD_SANDBOX"
MODES = ("auto", "required", "none")
MOUNT = "/sandbox"  # where the scratch directory appears inside a bwrap sandbox
SANDBOX_UID = 65534  # "nobody": not 0, so bwrap drops every capability and locks the mounts

NOT_ISOLATED = {
    "bwrap": "",
    "unshare": "the filesystem (the code can read every file the trainer can read and write "
               "where the trainer can write)",
    "none": "the network, the filesystem and other processes (the code can open sockets, read "
            "and write every file the trainer can, and signal the trainer's processes)",
}


class IsolationUnavailable(RuntimeError):
    """Isolation was required (`MOPD_SANDBOX=required`) and bubblewrap cannot run here."""


@dataclass(frozen=True)
class Backend:
    name: str  # "bwrap", "unshare" or "none"

    @property
    def isolated_fs(self) -> bool:
        return self.name == "bwrap"

    def root(self, scratch: Path) -> str:
        """The scratch directory's path as the sandboxed program sees it."""
        return MOUNT if self.isolated_fs else str(scratch)

    def python(self) -> str:
        return base_interpreter() if self.name != "none" else sys.executable

    def wrap(self, argv: list[str], scratch: Path) -> list[str]:
        """`argv` (paths as seen inside) prefixed with what puts it in the sandbox."""
        if self.name == "bwrap":
            return [_which("bwrap"), *_bwrap_args(scratch), "--", *argv]
        if self.name == "unshare":
            return [_which("unshare"), *_UNSHARE_ARGS, "--", *argv]
        return argv


_UNSHARE_ARGS = ["--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                 "--ipc", "--uts", "--mount", "--mount-proc"]


def resolve_mode(mode: str | None) -> str:
    mode = (mode or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR} / isolation must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def select_backend(mode: str | None = None) -> Backend:
    """The backend for this policy: raises IsolationUnavailable under `required` without bwrap;
    under `auto`, warns once (per backend) about what the fallback leaves unisolated."""
    mode = resolve_mode(mode)
    if mode == "none":
        return Backend("none")
    available = available_backends()
    if "bwrap" in available:
        return Backend("bwrap")
    if mode == "required":
        raise IsolationUnavailable(
            f"{ENV_VAR}=required but bubblewrap cannot run here ({available_backends.reason}); "
            "install it (`apt-get install bubblewrap`, or `make venv` as root) or allow the "
            f"fallback with {ENV_VAR}=auto")
    name = "unshare" if "unshare" in available else "none"
    _warn_once(name)
    return Backend(name)


@lru_cache(maxsize=None)
def _warn_once(name: str) -> None:
    log.warning("generated code runs without bubblewrap (%s), so it is not isolated from %s; "
                "install bubblewrap (see docs/sandbox.md) or set %s=required to refuse, %s=none "
                "to silence this", available_backends.reason, NOT_ISOLATED[name], ENV_VAR, ENV_VAR)


def available_backends() -> tuple[str, ...]:
    """The backends that ran a trivial program here (probed once per process: it starts a sandbox)."""
    with _probe_lock:  # verifier threads may ask at once; probe once
        if available_backends.cache is None:
            _detect()
    return available_backends.cache


def _detect() -> None:
    found, reasons = [], []
    for name in ("bwrap", "unshare"):
        reason = _probe(Backend(name))
        if reason is None:
            found.append(name)
        else:
            reasons.append(f"{name}: {reason}")
    available_backends.reason = "; ".join(reasons) or "all available"
    available_backends.cache = tuple(found)


available_backends.cache = None
available_backends.reason = ""
_probe_lock = threading.Lock()


def _probe(backend: Backend) -> str | None:
    if _which(backend.name) is None:
        return "not installed"
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    argv = backend.wrap([backend.python(), "-I", "-S", "-c", "print('ok')"], scratch)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=clean_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"failed to start ({e})"
    if out.stdout.strip() != "ok":
        return f"cannot create namespaces here ({out.stderr.strip()[-200:] or out.returncode})"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/bin:/bin")


def base_interpreter() -> str:
    """The interpreter the venv was made from (the venv itself is not shown in the sandbox)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _bwrap_args(scratch: Path) -> list[str]:
    args = ["--unshare-user", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged-/usr systems: /bin -> usr/bin
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in _interpreter_dirs() + ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d"]:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args + ["--bind", str(scratch), MOUNT, "--chdir", MOUNT, "--proc", "/proc",
                   "--dev", "/dev", "--tmpfs", "/tmp", "--setenv", "HOME", MOUNT]


def _interpreter_dirs() -> list[str]:
    # The prefix (stdlib) and the interpreter's own directory; neither the venv nor site-packages
    # beyond the base install (python runs with -I -S, so those are not imported anyway).
    dirs = {os.path.realpath(sys.base_prefix), os.path.dirname(base_interpreter())}
    return sorted(d for d in dirs if not d.startswith("/usr/") and d != "/usr")


def clean_env() -> dict[str, str]:
    # Nothing of ours is inherited: no API keys, no PYTHONPATH into the trainer's packages.
    return {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1"}


def reset_detection() -> None:
    """Probe again on the next run and warn again (for tests that simulate a missing tool)."""
    available_backends.cache = None
    _warn_once.cache_clear()
