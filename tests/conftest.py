"""Shared fixtures: tiny toy-domain models trained once per test session.

A common init (brief SFT on both domains) and one teacher per domain (more SFT on its own
domain from that init), mirroring stages 1-2 of the method at toy scale.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from mopd.config.schema import LoggingConfig, OptimConfig
from mopd.domains.toy import ReversalDomain, SortingDomain
from mopd.models.loading import save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model
from mopd.training.sft import SFTSettings, run_sft

TOY_PARAMS = {
    "reversal": {"min_len": 3, "max_len": 4, "n_train": 400, "n_eval": 100, "seed": 0},
    "sorting": {"min_len": 3, "max_len": 4, "n_train": 400, "n_eval": 100, "seed": 0},
}


def _sft(model, tok, examples, steps, schedule="cosine"):
    opt = OptimConfig(lr=3e-3, steps=steps, schedule=schedule, warmup_steps=10 if schedule == "cosine" else 0)
    run_sft(model, tok, examples, opt, SFTSettings(batch_size=64), logging=LoggingConfig(progress=False))


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory) -> dict[str, Path]:
    """Paths of HF directories: 'init' (knows both domains a little), 'reversal' and 'sorting' teachers."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("toy_models")
    tok = char_tokenizer()
    doms = {"reversal": ReversalDomain(name="reversal", **TOY_PARAMS["reversal"]),
            "sorting": SortingDomain(name="sorting", **TOY_PARAMS["sorting"])}
    init = tiny_model(tok, seed=7)
    _sft(init, tok, doms["reversal"].train_examples() + doms["sorting"].train_examples(), 150, "constant")
    save_pretrained(init, tok, root / "init")
    paths = {"init": root / "init"}
    for name, dom in doms.items():
        teacher = copy.deepcopy(init)
        _sft(teacher, tok, dom.train_examples(), 300)
        save_pretrained(teacher, tok, root / name)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    # Converted GGUF models (the short name `smollm2`, GGUF specs) go to a per-session cache,
    # not the user's: one conversion per test session, shared by every test that needs it.
    old = os.environ.get("MOPD_CACHE")
    os.environ["MOPD_CACHE"] = str(tmp_path_factory.mktemp("mopd_cache"))
    yield
    if old is None:
        os.environ.pop("MOPD_CACHE", None)
    else:
        os.environ["MOPD_CACHE"] = old
