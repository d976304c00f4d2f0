"""The `mopd` command line: the run commands here, the pipeline's in mopd.commands.pipeline."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mopd.commands.common import ConfigArg, SetOpt, _bad_input, _check_output_dir, _fail, _load, app, console

@app.command()
def distill(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")] = False,
    output_dir: Annotated[Optional[str], typer.Option(help="Override output_dir.")] = None,
) -> None:
    """Distill the domain teachers into the student on its own rollouts (MOPD)."""
    from mopd.build import build_run
    from mopd.teachers.base import TeacherError
    from mopd.training.checkpoint import CheckpointError
    from mopd.training.interrupt import TrainingInterrupted
    from mopd.training.loop import NoLearningSignal, NonFiniteRun, run_onpolicy, save_model

    cfg = _load(config, set_)
    _check_output_dir(Path(output_dir or cfg.output_dir))
    try:
        run = build_run(cfg, output_dir)
    except (ValueError, FileNotFoundError, OSError, TeacherError) as e:
        _fail(e)
    # The command that continues this run, to print when it stops early.
    again = shlex.join(["mopd", "distill", str(config), *[a for o in set_ or [] for a in ("--set", o)],
                        *(["--output-dir", output_dir] if output_dir else []), "--resume"])
    try:
        last = run_onpolicy(run, resume=resume)
    except TrainingInterrupted as e:
        console.print(f"[yellow]{escape(str(e))}[/yellow]\ncontinue with: {escape(again)}")
        raise typer.Exit(e.exit_code) from None
    except (TeacherError, NonFiniteRun, NoLearningSignal, CheckpointError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}\nafter fixing it, continue with: {escape(again)}",
                      soft_wrap=True)
        raise typer.Exit(1) from None
    final = run.output_dir / "final"
    save_model(run, final)
    if not run.dist.is_main:  # under `accelerate launch`, one report is enough
        return
    _print_metrics(last)
    console.print(f"student saved to [bold]{final}[/bold]; metrics in {run.output_dir / 'metrics.jsonl'}")


@app.command()
def check(config: ConfigArg, set_: SetOpt = None) -> None:
    """Validate CONFIG, compare each teacher's tokenizer with the student's, and distill the
    student into itself for one step: reverse KL and policy gradient must both be ~0."""
    from mopd.sanity import GRAD_TOLERANCE, KL_TOLERANCE, self_distillation_check
    from mopd.teachers.base import TeacherError

    cfg = _load(config, set_)
    console.print(f"config {config}: valid ({len(cfg.domains)} domains, {len(cfg.teachers)} teachers)")
    try:
        rep = self_distillation_check(cfg)
    except (ValueError, FileNotFoundError, OSError, TeacherError) as e:
        _fail(e)
    table = Table(title="teacher agreement with the student")
    for col in ("teacher", "vocabulary", "special tokens", "chat template", "detail"):
        table.add_column(col)
    yn = lambda b: "[green]same[/green]" if b else "[red]differs[/red]"  # noqa: E731
    for t in rep.teachers:
        table.add_row(t.teacher, yn(t.same_vocab), yn(t.same_specials), yn(t.same_chat_template), t.detail)
    console.print(table)
    console.print(f"self-distillation on {rep.tokens} tokens at temperature {rep.temperature:g}: reverse KL {rep.reverse_kl:.2e} "
                  f"(need < {KL_TOLERANCE:.0e}), grad norm {rep.grad_norm:.2e} (need < {GRAD_TOLERANCE:.0e})")
    for name, (single, total) in rep.single_token_spans.items():
        console.print(f"teacher {name} (another tokenizer): {single} of {total} student tokens "
                      f"({single / max(total, 1):.0%}) are one token on both sides")
    if rep.span_reverse_kl is not None:  # a teacher with another tokenizer: the same, through text and spans
        console.print(f"self-distillation through text and span alignment: reverse KL {rep.span_reverse_kl:.2e} "
                      f"(need < {KL_TOLERANCE:.0e})")
    if not rep.ok:
        console.print("[red]check failed[/red]")
        raise typer.Exit(1)
    console.print("[green]check passed[/green]")


@app.command("merge-lora")
def merge_lora(adapter: Annotated[Path, typer.Argument(help="A LoRA adapter directory (final/ or a checkpoint).")],
               out: Annotated[Path, typer.Argument(help="Where to write the merged Hugging Face model.")],
               base: Annotated[Optional[str], typer.Option(help="The base model (default: the one recorded "
                                                           "beside the adapter).")] = None) -> None:
    """Merge a LoRA adapter into its base model and write a plain Hugging Face directory."""
    from mopd.models.loading import save_pretrained
    from mopd.models.loading import load_merged

    try:
        model, tok = load_merged(adapter, base)
    except (*_bad_input(), OSError, ValueError) as e:
        _fail(e)
    save_pretrained(model, tok, out)
    console.print(f"merged model saved to [bold]{escape(str(out))}[/bold]")


def _print_metrics(m: dict[str, float]) -> None:
    keys = [k for k in sorted(m) if k.split("/")[0] in ("reverse_kl", "reward", "entropy", "masked", "length")]
    table = Table(title="last step")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in keys:
        table.add_row(k, f"{m[k]:.4g}")
    console.print(table)


# After the run commands, so that `mopd --help` lists them first.
import mopd.commands.pipeline  # noqa: E402,F401  (registers reproduce, sft, train-teacher, eval, report)

if __name__ == "__main__":
    app()
