"""Model sources: short names, the GGUF conversion cache (written once, atomically), plain paths.

The conversion itself is stubbed with a tiny model here; tests/e2e/test_smollm2.py converts
the real SmolLM2 GGUF.
"""

from pathlib import Path

import pytest
import torch

import mopd.models.loading as loading
from mopd.config.schema import ModelSpec
from mopd.models.loading import alias_gguf, convert_gguf, load_model, load_tokenizer, model_path, save_pretrained
from mopd.models.tiny import char_tokenizer, tiny_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOPD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the GGUF dequantisation with writing a tiny model; count the calls."""
    calls = []

    def convert(source, gguf_name, out):
        calls.append((source, gguf_name))
        tok = char_tokenizer()
        save_pretrained(tiny_model(tok, seed=len(calls)), tok, out)

    monkeypatch.setattr(loading, "_dequantise_into", convert)
    return calls


def gguf_file(tmp_path: Path, data: bytes = b"GGUF fake") -> Path:
    f = tmp_path / "Model-1B.Q4_0.gguf"
    f.write_bytes(data)
    return f


def test_gguf_converts_once_into_the_cache_and_loads_as_a_plain_model(tmp_path, cache, fake_convert):
    f = gguf_file(tmp_path)
    spec = ModelSpec(gguf_file=str(f))
    d = Path(model_path(spec))
    assert d.parent == cache and d.name.startswith("model-1b.q4_0-")
    assert (d / "model.safetensors").is_file() and (d / "source.json").is_file()
    model, tok = load_model(spec), load_tokenizer(spec)
    assert len(fake_convert) == 1  # later loads reuse the directory
    assert all(p.requires_grad for p in model.parameters()) and tok.pad_token_id is not None
    assert load_model(ModelSpec(gguf_file=str(f), dtype="bfloat16")).dtype == torch.bfloat16
    assert len(fake_convert) == 1 and [p.name for p in cache.iterdir()] == [d.name]


def test_a_replaced_gguf_file_converts_again(tmp_path, cache, fake_convert):
    f = gguf_file(tmp_path)
    first = model_path(ModelSpec(gguf_file=str(f)))
    gguf_file(tmp_path, b"GGUF another, longer file")
    second = model_path(ModelSpec(gguf_file=str(f)))
    assert first != second and len(fake_convert) == 2


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, cache, monkeypatch):
    def broken(source, gguf_name, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(loading, "_dequantise_into", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gguf(str(gguf_file(tmp_path)))
    assert list(cache.iterdir()) == []


def test_missing_gguf_file_is_a_clear_error(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_path(ModelSpec(gguf_file=str(tmp_path / "nope.gguf")))


def test_short_name_finds_the_gguf_in_its_package_without_importing_it(tmp_path, cache, fake_convert,
                                                                        monkeypatch):
    pkg = tmp_path / "site" / "fake_model_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    (pkg / "Fake-135M.Q4_1.gguf").write_bytes(b"GGUF fake")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(loading.ALIASES, "fake", ("fake_model_pkg", "*.gguf", "pip install fake-model-pkg"))
    assert alias_gguf("fake") == pkg / "Fake-135M.Q4_1.gguf"
    by_name = model_path(ModelSpec(path="fake"))
    assert by_name == model_path(ModelSpec(gguf_file=str(pkg / "Fake-135M.Q4_1.gguf")))  # one conversion
    assert len(fake_convert) == 1
    # A local directory of the same name wins over the short name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fake").mkdir()
    assert model_path(ModelSpec(path="fake")) == "fake"


def test_short_name_without_its_package_says_what_to_install(cache, monkeypatch):
    monkeypatch.setitem(loading.ALIASES, "fake", ("no_such_model_pkg_xyz", "*.gguf", "pip install no-such-pkg"))
    with pytest.raises(FileNotFoundError, match="pip install no-such-pkg"):
        model_path(ModelSpec(path="fake"))


def test_hf_directories_and_hub_ids_pass_through(tmp_path):
    tok = char_tokenizer()
    save_pretrained(tiny_model(tok, seed=1), tok, tmp_path / "plain")
    assert model_path(ModelSpec(path=str(tmp_path / "plain"))) == str(tmp_path / "plain")
    assert model_path(ModelSpec(path="HuggingFaceTB/SmolLM2-135M-Instruct")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert isinstance(load_model(ModelSpec(path=str(tmp_path / "plain"))), torch.nn.Module)


def test_attention_implementation_is_passed_to_transformers(tmp_path):
    tok = char_tokenizer()
    save_pretrained(tiny_model(tok), tok, tmp_path / "m")
    ids = torch.tensor([[5, 6, 7, 8]])
    outs = {}
    for attn in ("eager", "sdpa"):
        for spec in (ModelSpec(path=str(tmp_path / "m"), attn_implementation=attn),
                     ModelSpec(tiny={}, attn_implementation=attn)):
            model = load_model(spec, tok)
            assert model.config._attn_implementation == attn
            with torch.no_grad():
                outs.setdefault(spec.tiny is None, []).append(model(ids).logits)
    for eager, sdpa in outs.values():  # another kernel, the same numbers
        torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)
    assert load_model(ModelSpec(tiny={}), tok).config._attn_implementation == "sdpa"  # transformers' default
