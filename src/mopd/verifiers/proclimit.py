"""A per-run pids cgroup: the process cap that holds where RLIMIT_NPROC does not.

RLIMIT_NPROC is counted per user (per user namespace since Linux 5.14, which is what makes it
work inside a sandbox) and is never enforced for host uid 0, and a bubblewrap sandbox started by
root still runs as host uid 0. So when the cgroup filesystem is writable (root in a VM or a
privileged container, or a delegated subtree), each run gets a fresh pids cgroup with `pids.max`
set; a fork bomb then fails to fork instead of filling the machine's PID table. The program is
moved into the cgroup by a shell that then execs it, so every process it makes starts inside.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)


def wrap(argv: list[str], cgroup: Path | None) -> list[str]:
    if cgroup is None:
        return argv
    return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *argv]


def create(max_processes: int) -> Path | None:
    """A new pids cgroup limited to `max_processes`, or None where none can be made."""
    for parent in _parents():
        group = parent / f"mopd-sandbox-{uuid.uuid4().hex[:12]}"
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            (group / "pids.max").write_text(str(max_processes))
            return group
        except OSError:
            remove(group)
    return None


def remove(group: Path | None) -> None:
    """Kill whatever is left in the cgroup (a daemon that left our process group) and delete it."""
    if group is None:
        return
    for _ in range(50):
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # busy until the killed processes are reaped


@lru_cache(maxsize=None)
def warn_unlimited(backend: str) -> None:
    why = "as root" if os.geteuid() == 0 else "in a plain subprocess"
    log.warning("generated code's processes are not capped (RLIMIT_NPROC does not hold %s under "
                "%s, and no pids cgroup is writable): a fork bomb runs until the time limit; "
                "see docs/sandbox.md", why, backend)


@lru_cache(maxsize=1)
def _parents() -> tuple[Path, ...]:
    # Our own cgroup in the pids hierarchy: v1 (a `pids` mount) or v2 (pids in subtree_control).
    own_v1 = own_v2 = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            own_v1 = path
        elif hid == "0":
            own_v2 = path
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype, opts = line.split()[:4]
        if fstype == "cgroup" and "pids" in opts.split(",") and own_v1:
            found.append(Path(mnt + own_v1))
        elif fstype == "cgroup2" and own_v2:
            d = Path(mnt + own_v2)
            try:
                if "pids" in (d / "cgroup.subtree_control").read_text().split():
                    found.append(d)
            except OSError:
                pass
    return tuple(d for d in found if os.access(d, os.W_OK))
