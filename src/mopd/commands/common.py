"""What every `mopd` command shares: the Typer app, the console, config loading, one-line errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mopd.config.load import ConfigError, load_config
from mopd.config.schema import RunConfig

app = typer.Typer(
    help="Multi-teacher On-Policy Distillation: merge domain-specialist teachers into one student.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file.", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override a config key, e.g. --set optim.lr=1e-5 --set domains.math.weight=2. Repeatable.")]


def _load(config: Path, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, RunConfig, overrides or [])
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def wide_console() -> Console:
    """Standard output for tables: the terminal's width, or wide enough that a table written to a
    log or a pipe is not squeezed to rich's default of 80 columns ("Off-Po… FT")."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _fail(e: Exception) -> None:
    # One line however long (a wrapped path is hard to copy); escaped, as messages quote user text.
    console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
    raise typer.Exit(1)


def _check_output_dir(path: Path) -> None:
    """Fail before any model loads when `path` cannot become a directory (it, or a parent, is a file)."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                _fail(NotADirectoryError(f"output_dir {path}: {p} is a file, not a directory; choose another "
                                         "output_dir (--output-dir) or move the file away"))
            return


def _bad_input() -> tuple[type[Exception], ...]:
    """What the pipeline commands report in one line: a user's file or path, not a bug of mopd's."""
    from mopd.data.prompts import DataError
    from mopd.domains.user import DomainFileError

    return (DomainFileError, DataError, FileNotFoundError)  # models.loading.ModelNotFound is one too


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers' per-file load/save bars would drown mopd's own progress display.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
