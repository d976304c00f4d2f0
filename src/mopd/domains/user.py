"""User-defined domains, loaded from a Python file named in the config.

The file provides either
  - an attribute (default `domain`) holding a Domain object, a Domain class, or a factory
    function returning a Domain; classes and factories are called with the config's params; or
  - module-level functions `train_examples()`, `eval_examples()`, `reward(completion, example)`,
    plus an optional module-level `name` (else the config's domain name is used).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from mopd.domains.base import Domain, Example

_FUNCTIONS = ("train_examples", "eval_examples", "reward")


class DomainFileError(ValueError):
    """A user's domain file failed while it was imported (the user's bug, not mopd's)."""


def _import_failure(shown: str | Path, resolved: Path, e: BaseException) -> DomainFileError:
    """One line naming the file, the exception and the line of the file it came from.

    The line is the file's own (for a failing `import helper`, the import line), since the
    traceback inside mopd's loader means nothing to the author of the domain.
    """
    line = e.lineno if isinstance(e, SyntaxError) and e.filename == str(resolved) else None
    if line is None:
        mine = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(resolved)]
        line = mine[-1].lineno if mine else None
    what = e.msg if isinstance(e, SyntaxError) else str(e)
    what = what.splitlines()[0] + " ..." if len(what.splitlines()) > 1 else what
    at = f" (line {line})" if line else ""
    return DomainFileError(f"importing {shown} raised {type(e).__name__}: {what}{at}; fix the file and rerun")


def import_file(path: str | Path) -> ModuleType:
    """Import a Python file as a module without touching sys.path.

    The module is registered in sys.modules under a name derived from its absolute path:
    dataclasses and pickling (e.g. multiprocessing workers) look classes up there, and the
    same file loaded twice returns the same module instead of two copies of its classes.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"domain file not found: {p}")
    p = p.resolve()
    mod_name = f"mopd_user_domain_{p.stem}_{hashlib.sha1(str(p).encode()).hexdigest()[:10]}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import domain file {p}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[mod_name]  # a broken file must not stay half-imported
        if isinstance(e, (Exception, SystemExit)):  # Ctrl-C stays an interruption
            raise _import_failure(path, p, e) from e
        raise
    return module


class FunctionDomain:
    """A Domain made of three plain functions; dict rows become Examples of this domain."""

    def __init__(
        self,
        name: str,
        train_fn: Callable[[], list[Any]],
        eval_fn: Callable[[], list[Any]],
        reward_fn: Callable[[str, Example], float],
        source: str = "<functions>",
    ) -> None:
        self.name = name
        self._train_fn, self._eval_fn, self._reward_fn = train_fn, eval_fn, reward_fn
        self._source = source

    def _examples(self, rows: list[Any], which: str) -> list[Example]:
        out = []
        for i, row in enumerate(rows):
            if isinstance(row, dict):
                try:
                    row = Example(**{"domain": self.name, **row})
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{self._source}: {which}() row {i} is not a valid example: {e}") from e
            if not isinstance(row, Example):
                raise ValueError(
                    f"{self._source}: {which}() row {i} is a {type(row).__name__}, "
                    "expected mopd Example or dict"
                )
            if row.domain != self.name:
                raise ValueError(
                    f"{self._source}: {which}() row {i} has domain {row.domain!r}, "
                    f"expected {self.name!r}"
                )
            out.append(row)
        return out

    def train_examples(self) -> list[Example]:
        return self._examples(list(self._train_fn()), "train_examples")

    def eval_examples(self) -> list[Example]:
        return self._examples(list(self._eval_fn()), "eval_examples")

    def reward(self, completion: str, example: Example) -> float:
        return float(self._reward_fn(completion, example))


def _accepts(fn: Callable[..., Any], param: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return param in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def load_user_domain(
    path: str | Path,
    name: str | None = None,
    attr: str | None = None,
    params: dict[str, Any] | None = None,
) -> Domain:
    """Build the domain defined in the Python file `path`.

    `attr` names the Domain object/class/factory (default `domain`; when the default is absent
    the module-level functions are used instead). `name`, when given, must match the domain's
    own name, since it is the routing label of every example.
    """
    params = dict(params or {})
    module = import_file(path)
    where = f"domain file {path}"

    if attr is not None or hasattr(module, "domain"):
        key = attr or "domain"
        if not hasattr(module, key):
            raise ValueError(f"{where} has no attribute {key!r}")
        obj = getattr(module, key)
        if isinstance(obj, Domain) and not inspect.isclass(obj):
            if params:
                raise ValueError(f"{where}: {key!r} is an object; params {sorted(params)} cannot be applied")
        elif callable(obj):
            # A class or a factory: the config's params are its keyword arguments.
            if name is not None and "name" not in params and _accepts(obj, "name"):
                params["name"] = name
            try:
                obj = obj(**params)
            except TypeError as e:
                raise ValueError(f"{where}: cannot build {key!r} with params {params}: {e}") from e
        if not isinstance(obj, Domain):
            raise ValueError(
                f"{where}: {key!r} is not a Domain (needs `name`, `train_examples()`, "
                "`eval_examples()`, `reward(completion, example)`)"
            )
        if name is not None and obj.name != name:
            raise ValueError(f"{where}: the domain is named {obj.name!r} but the config calls it {name!r}")
        return obj

    missing = [f for f in _FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise ValueError(
            f"{where} defines neither a `domain` attribute nor the functions "
            f"{', '.join(_FUNCTIONS)} (missing: {', '.join(missing)})"
        )
    mod_name = getattr(module, "name", None)
    if mod_name is not None and not isinstance(mod_name, str):
        raise ValueError(f"{where}: module-level `name` must be a string, got {type(mod_name).__name__}")
    if name is not None and mod_name is not None and mod_name != name:
        raise ValueError(f"{where}: the module's name is {mod_name!r} but the config calls it {name!r}")
    final = name or mod_name
    if not final:
        raise ValueError(f"{where}: no domain name (set a module-level `name` or name it in the config)")
    if params:
        raise ValueError(f"{where}: module-level functions take no params, got {sorted(params)}")
    return FunctionDomain(final, module.train_examples, module.eval_examples, module.reward, where)
