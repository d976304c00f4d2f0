"""Checkpoints reach the disk before they are renamed into place (power-cut safety)."""

import os

import torch

from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.training import checkpoint as ckpt


def test_every_checkpoint_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    tok = char_tokenizer()
    model = tiny_model(tok, 16, 1, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    root = tmp_path / "checkpoints"
    final = ckpt.save_checkpoint(root, 3, model, tok, opt, sched, {})

    synced = [p for kind, p in events if kind == "fsync"]
    tmp = str(root / ".tmp-step-000003")
    files = [p for p in synced if p.startswith(tmp + "/")]
    written = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
    assert sorted(os.path.relpath(p, tmp) for p in files) == written  # every file, under its temp name
    assert ckpt.STATE_FILE in written and any(w.endswith(".safetensors") for w in written)
    assert tmp in synced  # the temp directory's entries too
    assert synced[-1] == str(root)  # and, last, the rename itself
    assert ckpt.latest_checkpoint(root) == final
