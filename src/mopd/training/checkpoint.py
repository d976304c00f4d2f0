"""Checkpoints: a Hugging Face model directory plus the trainer state.

Written to a temporary directory and renamed into place, so a crash mid-write never leaves
a half checkpoint under a real name; `latest_checkpoint` only sees complete ones. The files
and directories are fsynced before and after the rename, so a power cut cannot leave a
renamed checkpoint whose contents never reached the disk.

Each checkpoint carries a manifest (size and sha256 of every file), so that a checkpoint damaged
later (a disk error, a partial copy) is recognised on resume and passed over for an older one.
The hash is of whole files: a size catches truncation but not flipped bytes, and a header hash
misses damage in the weights. It costs one read of the files, which at save time are still in
the page cache, and at resume one read before loading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from mopd.models.loading import save_pretrained

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^(?:\.old-)?step-(\d+)$")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(root: str | Path, step: int, model, tokenizer, optimizer, scheduler,
                    extra: dict, keep: int = 2) -> Path:
    """Write `root/step-NNNNNN` so that a kill at any moment leaves a loadable checkpoint.

    Everything goes to `.tmp-step-N` first (the trainer state last: its presence marks a
    complete checkpoint) and is renamed into place. A checkpoint of the same step that is
    replaced is first moved aside to `.old-step-N`, which `list_checkpoints` still accepts
    until the new one is in place; old checkpoints are pruned only after that.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp, old = root / f".tmp-{final.name}", root / f".old-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(model, tokenizer, tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), **extra}, tmp / STATE_FILE)
    write_manifest(tmp)
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    for stale in list_checkpoints(root)[:-keep]:
        _remove(stale)
    return final


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the directories, to stable storage."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def _remove(path: Path) -> None:
    # Rename first: a kill halfway through deleting must not leave a gutted checkpoint
    # under a name that list_checkpoints accepts.
    doomed = path.with_name(f".del-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first; `.old-step-N` stands in for a missing `step-N`."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for p in sorted(root.iterdir(), key=lambda p: p.name.startswith(".")):  # real names win
        if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file():
            found.setdefault(int(m.group(1)), p)
    return [found[k] for k in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_trainer_state(path: str | Path) -> dict:
    return torch.load(Path(path) / STATE_FILE, weights_only=False)


class CheckpointError(RuntimeError):
    """Checkpoints exist, but none of them is intact."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):  # 16 MiB at a time: a GB weight file never sits in memory whole
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"version": 1, "files": files}, indent=1))


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with the checkpoint at `path`, or None when it is intact."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return _load_problem(path)
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        wanted = {rel: (int(w["size"]), str(w["sha256"])) for rel, w in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for rel, (size, digest) in wanted.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if (have := f.stat().st_size) != size:
            return f"{rel} has {have} bytes, {size} were written"
        if _sha256(f) != digest:
            return f"{rel} does not match the sha256 it was written with"
    return None


def _load_problem(path: Path) -> str | None:
    """Checkpoints written before the manifest: intact if every file of them loads."""
    from safetensors import safe_open

    name = STATE_FILE
    try:
        for f in sorted(path.glob("*.json")):
            name = f.name
            json.loads(f.read_text())
        for f in sorted(path.glob("*.safetensors")):
            name = f.name
            with safe_open(f, "pt") as st:
                for key in st.keys():
                    st.get_tensor(key)
        name = STATE_FILE
        torch.load(path / STATE_FILE, weights_only=False, map_location="cpu")
    except Exception as e:  # any failure to load is damage, whatever the library raises
        first = (str(e).splitlines() or [""])[0]
        return f"{name} does not load ({type(e).__name__}: {first})"
    return None


def usable_checkpoint(root: str | Path) -> Path | None:
    """The newest intact checkpoint under `root`; None when there is none at all.

    A damaged one is left in place (its files may still be worth recovering) with a warning
    naming it; a later save of the same step replaces it. When every checkpoint is damaged,
    CheckpointError says so rather than silently starting over.
    """
    damaged = []
    for path in reversed(list_checkpoints(root)):
        if (problem := checkpoint_problem(path)) is None:
            return path
        log.warning("checkpoint %s is damaged (%s); resuming from an older one if there is one", path, problem)
        damaged.append(f"{path.name}: {problem}")
    if damaged:
        raise CheckpointError(f"every checkpoint in {root} is damaged ({'; '.join(damaged)}); restore one from a "
                              "copy, or move the directory away and run without --resume to start over")
    return None
