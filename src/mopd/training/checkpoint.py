"""Checkpoints: a Hugging Face model directory plus the trainer state.

Written to a temporary directory and renamed into place, so a crash mid-write never leaves
a half checkpoint under a real name; `latest_checkpoint` only sees complete ones. The files
and directories are fsynced before and after the rename, so a power cut cannot leave a
renamed checkpoint whose contents never reached the disk.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from mopd.models.loading import save_pretrained

STATE_FILE = "trainer_state.pt"
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
