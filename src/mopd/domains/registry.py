"""Domain lookup: a config names each domain and its kind, this turns that into a Domain.

kind is a built-in name (`addition`, `reversal`, `sorting`, `math`, `arithmetic`, `capitals`, and the
agentic `lookup` and `swe`) or `python:/path/to/file.py[:attr]` for user code (see `mopd.domains.user`; a
file that defines `environment` is an agentic domain, see `mopd.envs.domain`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mopd.domains.base import Domain
from mopd.domains.chat import ArithmeticDomain, CapitalsDomain
from mopd.domains.math import MathDomain
from mopd.domains.letters import LetterDomain, LetterLookupDomain
from mopd.domains.lookup import LookupDomain
from mopd.domains.swe import SWEDomain
from mopd.domains.toy import AdditionDomain, ReversalDomain, SortingDomain
from mopd.domains.user import DomainFileError, import_file, load_user_domain
from mopd.envs.domain import env_domain_from_module

BUILTIN_DOMAINS: dict[str, Callable[..., Domain]] = {
    "addition": AdditionDomain,
    "reversal": ReversalDomain,
    "sorting": SortingDomain,
    "math": MathDomain,
    "arithmetic": ArithmeticDomain,
    "capitals": CapitalsDomain,
    "lookup": LookupDomain,
    "swe": SWEDomain,
    "letters": LetterDomain,
    "lookup_letters": LetterLookupDomain,
}

PYTHON_PREFIX = "python:"


def parse_python_kind(kind: str) -> tuple[str, str | None]:
    """`python:/a/b.py:attr` -> ("/a/b.py", "attr"); the attr part is optional."""
    spec = kind[len(PYTHON_PREFIX):]
    path, sep, attr = spec.rpartition(":")
    # Only split on a trailing `:identifier`; this leaves `C:\x\y.py` and plain paths intact.
    if sep and path and attr.isidentifier():
        return path, attr
    return spec, None


def build_domain(name: str, kind: str, params: dict[str, Any] | None = None) -> Domain:
    """Build the domain `name` of the given kind, with constructor params from the config."""
    params = dict(params or {})
    if kind.startswith(PYTHON_PREFIX):
        path, attr = parse_python_kind(kind)
        if not path:
            raise ValueError(f"domain {name!r}: kind {kind!r} names no file (use python:/path/file.py[:attr])")
        try:
            module = import_file(path)
        except DomainFileError as e:  # which domain of the config, too
            raise DomainFileError(f"domain {name!r}: {e}") from e.__cause__
        if attr is None and hasattr(module, "environment"):
            return env_domain_from_module(module, name, f"environment file {path}", params)
        return load_user_domain(path, name=name, attr=attr, params=params)
    if kind not in BUILTIN_DOMAINS:
        raise ValueError(
            f"domain {name!r}: unknown kind {kind!r}; built-ins are {', '.join(sorted(BUILTIN_DOMAINS))}, "
            "or use python:/path/file.py[:attr] for your own"
        )
    factory = BUILTIN_DOMAINS[kind]
    accepted = [p for p in inspect.signature(factory).parameters if p != "name"]
    unknown = sorted(set(params) - set(accepted))
    if unknown or "name" in params:
        bad = unknown or ["name"]
        raise ValueError(
            f"domain {name!r} ({kind}): unknown params {bad}; accepted: {', '.join(accepted)}"
        )
    return factory(name=name, **params)
