"""The benchmark scripts are scripts, not a package: their tests load them by file name, with
benchmarks/ on sys.path while they run because the scripts import their neighbours (common,
lockstep, limits) by name."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1]


def load_scripts(*names: str):
    """Yield the named scripts (benchmarks/NAME.py) as modules, then take benchmarks/ off sys.path."""
    sys.path.insert(0, str(BENCH))
    try:
        modules = []
        for name in names:
            spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            modules.append(module)
        yield modules[0] if len(modules) == 1 else tuple(modules)
    finally:
        sys.path.remove(str(BENCH))
