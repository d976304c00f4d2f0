"""Read a YAML config, apply `--set key.path=value` overrides, validate."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML, so 1e-5 / true / [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {item!r} has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML 1.1 reads 1e-5 (no dot) as a string; take it as the float it is meant to be.
    if isinstance(value, str) and _SCI_FLOAT.fullmatch(value.strip()):
        value = float(value)
    return keys, value


_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            if isinstance(node, list):
                node = node[_list_index(node, k, item)]
            else:
                node = node.setdefault(k, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
        last = keys[-1]
        if isinstance(node, list):
            node[_list_index(node, last, item)] = value
        else:
            node[last] = value
    return data


def _list_index(node: list, key: str, item: str) -> int:
    # Lists are addressed by index (domains.0.weight) or by an element's name (domains.math.weight).
    if key.isdigit() and int(key) < len(node):
        return int(key)
    for i, el in enumerate(node):
        if isinstance(el, dict) and el.get("name") == key:
            return i
    raise ConfigError(f"override {item!r}: no list element {key!r}")


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        shown, _, kind = _walk(model, e["loc"])
        loc = ".".join(shown) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            _, node, kind = _walk(model, e["loc"][:-1])
            known = list(getattr(node, "model_fields", {}))
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            msg = f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
            if known:
                msg += f" (keys here{f' for kind {kind!r}' if kind else ''}: {', '.join(known)})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _walk(model: type[BaseModel] | None, loc: tuple) -> tuple[list[str], Any, str | None]:
    """Follow `loc` from `model`: (the path as the user wrote it, the section model at its end,
    the union tag picked on the way). A union keyed on `kind` (teachers) puts the kind in
    pydantic's path; the user never wrote it there, so it is left out of the path shown."""
    node: Any = model
    shown, kind = [], None
    for part in loc:
        kinds = _kinds(node)
        if kinds is not None and part in kinds:
            node, kind = kinds[part], str(part)
            continue
        shown.append(str(part))
        if isinstance(part, int) or node is None:
            continue
        field = getattr(node, "model_fields", {}).get(part)
        node, kind = (None if field is None else _model_in(field.annotation)), None
    return shown, node, kind


def _kinds(node: Any) -> dict[str, type[BaseModel]] | None:
    # A tagged union type declares its members (mopd.config.models.TeacherConfig.kinds).
    if isinstance(node, type) and not issubclass(node, BaseModel) and callable(getattr(node, "kinds", None)):
        return node.kinds()
    return None


def _model_in(annotation: Any) -> type | None:
    # `X | None`, `list[X]`: the pydantic model (or tagged union of models) inside, if any.
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or _kinds(annotation) is not None):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None, model: type[M], overrides: list[str] | None = None,
                data: dict | None = None) -> M:
    """Validate `path` (or `data`) with overrides applied against `model`."""
    source = str(path) if path is not None else "(in memory)"
    raw = read_yaml(path) if path is not None else copy.deepcopy(dict(data or {}))
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, model)) from None
    # Relative paths inside a config are relative to the config file.
    if path is not None:
        _resolve_paths(cfg, Path(path).resolve().parent)
    return cfg


def _resolve_paths(node: Any, base: Path) -> None:
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            value = getattr(node, name)
            if name in ("path", "gguf_file", "tokenizer") and isinstance(value, str) and _is_relative_local(value, base):
                object.__setattr__(node, name, str((base / value).resolve()))
            else:
                _resolve_paths(value, base)
    elif isinstance(node, list):
        for el in node:
            _resolve_paths(el, base)


def _is_relative_local(value: str, base: Path) -> bool:
    # `./x`, `../x`, or a relative path that exists next to the config; a hub id is left alone.
    return not Path(value).is_absolute() and (value.startswith(".") or (base / value).exists())
