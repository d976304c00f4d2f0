"""A checkpoint's manifest catches damage done after it was written; older checkpoints load-check."""

import json
import logging

import pytest
import torch

from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.training import checkpoint as ckpt


def save(root, step: int):
    tok = char_tokenizer()
    model = tiny_model(tok, 16, 1, 2, seed=step)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return ckpt.save_checkpoint(root, step, model, tok, opt, sched, {"sampler": {}}, keep=3)


def flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def good(tmp_path):
    return save(tmp_path / "checkpoints", 2)


def test_manifest_lists_every_file_and_an_intact_checkpoint_passes(good):
    files = json.loads((good / ckpt.MANIFEST).read_text())["files"]
    on_disk = sorted(p.name for p in good.iterdir() if p.name != ckpt.MANIFEST)
    assert sorted(files) == on_disk and "model.safetensors" in files and ckpt.STATE_FILE in files
    assert ckpt.checkpoint_problem(good) is None


def test_truncated_file(good):
    f = good / "model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size // 2])
    assert ckpt.checkpoint_problem(good) == f"model.safetensors has {size // 2} bytes, {size} were written"


def test_flipped_bytes_in_the_weights(good):
    f = good / "model.safetensors"
    flip(f, f.stat().st_size - 3)  # in the tensor data: same size, still parses
    assert ckpt.checkpoint_problem(good) == "model.safetensors does not match the sha256 it was written with"


def test_deleted_file(good):
    (good / "tokenizer.json").unlink()
    assert ckpt.checkpoint_problem(good) == "tokenizer.json is missing"


def test_damaged_manifest(good):
    (good / ckpt.MANIFEST).write_text('{"files": {"model.safetens')
    assert ckpt.checkpoint_problem(good).startswith(f"its {ckpt.MANIFEST} is unreadable")


def test_checkpoint_from_before_the_manifest_is_load_checked(good):
    (good / ckpt.MANIFEST).unlink()
    assert ckpt.checkpoint_problem(good) is None  # still resumes
    f = good / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    assert ckpt.checkpoint_problem(good).startswith("model.safetensors does not load")


def test_old_trainer_state_truncated_is_caught_by_loading(good):
    (good / ckpt.MANIFEST).unlink()
    f = good / ckpt.STATE_FILE
    f.write_bytes(f.read_bytes()[:200])
    assert ckpt.checkpoint_problem(good).startswith(f"{ckpt.STATE_FILE} does not load")


def test_usable_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    older, newest = save(root, 2), save(root, 4)
    assert ckpt.usable_checkpoint(root) == newest
    flip(newest / ckpt.STATE_FILE, 50)
    with caplog.at_level(logging.WARNING):
        assert ckpt.usable_checkpoint(root) == older
    assert f"checkpoint {newest} is damaged ({ckpt.STATE_FILE} does not match" in caplog.text
    assert (newest / ckpt.STATE_FILE).is_file()  # left in place, not deleted
    flip(older / "config.json", 0)
    with pytest.raises(ckpt.CheckpointError, match=r"every checkpoint in .* is damaged \(step-000004: .*step-000002"):
        ckpt.usable_checkpoint(root)


def test_no_checkpoint_at_all_is_not_an_error(tmp_path):
    assert ckpt.usable_checkpoint(tmp_path / "checkpoints") is None
