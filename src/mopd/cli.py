"""The `mopd` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

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


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/red] {e}")
    raise typer.Exit(1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def distill(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")] = False,
    output_dir: Annotated[Optional[str], typer.Option(help="Override output_dir.")] = None,
) -> None:
    """Distill the domain teachers into the student on its own rollouts (MOPD)."""
    from mopd.build import build_mopd_run
    from mopd.models.loading import save_pretrained
    from mopd.training.loop import run_onpolicy

    cfg = _load(config, set_)
    try:
        run = build_mopd_run(cfg, output_dir)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(e)
    last = run_onpolicy(run, resume=resume)
    final = run.output_dir / "final"
    save_pretrained(run.model, run.tokenizer, final)
    _print_metrics(last)
    console.print(f"student saved to [bold]{final}[/bold]; metrics in {run.output_dir / 'metrics.jsonl'}")


@app.command()
def check(config: ConfigArg, set_: SetOpt = None) -> None:
    """Validate CONFIG, compare each teacher's tokenizer with the student's, and distill the
    student into itself for one step: reverse KL and policy gradient must both be ~0."""
    from mopd.sanity import GRAD_TOLERANCE, KL_TOLERANCE, self_distillation_check

    cfg = _load(config, set_)
    console.print(f"config {config}: valid ({len(cfg.domains)} domains, {len(cfg.teachers)} teachers)")
    try:
        rep = self_distillation_check(cfg)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(e)
    table = Table(title="teacher agreement with the student")
    for col in ("teacher", "vocabulary", "special tokens", "chat template", "detail"):
        table.add_column(col)
    yn = lambda b: "[green]same[/green]" if b else "[red]differs[/red]"  # noqa: E731
    for t in rep.teachers:
        table.add_row(t.teacher, yn(t.same_vocab), yn(t.same_specials), yn(t.same_chat_template), t.detail)
    console.print(table)
    console.print(f"self-distillation on {rep.tokens} tokens: reverse KL {rep.reverse_kl:.2e} "
                  f"(need < {KL_TOLERANCE:.0e}), grad norm {rep.grad_norm:.2e} (need < {GRAD_TOLERANCE:.0e})")
    if not rep.ok:
        console.print("[red]check failed[/red]")
        raise typer.Exit(1)
    console.print("[green]check passed[/green]")


def _print_metrics(m: dict[str, float]) -> None:
    keys = [k for k in sorted(m) if k.split("/")[0] in ("reverse_kl", "reward", "entropy", "masked", "length")]
    table = Table(title="last step")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in keys:
        table.add_row(k, f"{m[k]:.4g}")
    console.print(table)


if __name__ == "__main__":
    app()
