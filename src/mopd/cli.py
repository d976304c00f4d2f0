"""The `mopd` command line."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
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


@app.command()
def distill(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")] = False,
    output_dir: Annotated[Optional[str], typer.Option(help="Override output_dir.")] = None,
) -> None:
    """Distill the domain teachers into the student on its own rollouts (MOPD)."""
    from mopd.build import build_mopd_run
    from mopd.teachers.base import TeacherError
    from mopd.training.checkpoint import CheckpointError
    from mopd.training.interrupt import TrainingInterrupted
    from mopd.training.loop import NoLearningSignal, NonFiniteRun, run_onpolicy, save_model

    cfg = _load(config, set_)
    _check_output_dir(Path(output_dir or cfg.output_dir))
    try:
        run = build_mopd_run(cfg, output_dir)
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
    if not rep.ok:
        console.print("[red]check failed[/red]")
        raise typer.Exit(1)
    console.print("[green]check passed[/green]")


def _pipeline(config: Optional[Path], preset: Optional[str], overrides: list[str] | None):
    from mopd.pipeline.config import PRESETS, PipelineConfig

    if (config is None) == (preset is None):
        console.print("[red]error:[/red] give a pipeline CONFIG file or --preset " + "/".join(PRESETS))
        raise typer.Exit(2)
    if preset is not None and preset not in PRESETS:
        console.print(f"[red]error:[/red] unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        raise typer.Exit(2)
    data = PRESETS[preset]().model_dump() if preset else None
    try:
        return load_config(config, PipelineConfig, overrides or [], data=data)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


PipelineArg = Annotated[Optional[Path], typer.Argument(help="Pipeline YAML (see examples/); or use --preset.")]
PresetOpt = Annotated[Optional[str], typer.Option(
    help="Built-in pipeline: tiny (the demo), micro (smoke test) or smollm2 (a real model, ~1 h on a CPU).")]
OutOpt = Annotated[Optional[str], typer.Option(help="Override output_dir.")]


@app.command()
def reproduce(config: PipelineArg = None, preset: PresetOpt = None, set_: SetOpt = None,
              output_dir: OutOpt = None) -> None:
    """Run the whole experiment: SFT init -> domain teachers (GRPO) -> MOPD -> baselines (Mix-RL,
    Cascade RL, off-policy FT, parameter merges) -> the paper's table. Finished stages are cached:
    rerunning resumes after the last one."""
    from mopd.pipeline.reproduce import reproduce as run
    from mopd.training.interrupt import TrainingInterrupted
    from mopd.training.loop import NoLearningSignal, NonFiniteRun

    cfg = _pipeline(config, preset, set_)
    out = Path(output_dir or cfg.output_dir)
    _check_output_dir(out)
    try:
        text = run(cfg, output_dir)
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        # Stages are cached as a whole: the finished ones are kept, the interrupted one starts over.
        again = shlex.join(["mopd", "reproduce", *([str(config)] if config else []),
                            *(["--preset", preset] if preset else []), *[a for o in set_ or [] for a in ("--set", o)],
                            "--output-dir", str(out)])
        console.print(f"[yellow]interrupted[/yellow]; finished stages are kept in {escape(str(out))}\n"
                      f"continue with: {escape(again)}")
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    except (NoLearningSignal, NonFiniteRun, *_bad_input()) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}\nfinished stages are kept in {escape(str(out))}",
                      soft_wrap=True)
        raise typer.Exit(1) from None
    from rich.markdown import Markdown

    wide_console().print(Markdown(text))
    console.print(f"report: {out / 'report.md'} (+ report.json, report.png)")


@app.command()
def sft(config: PipelineArg = None, preset: PresetOpt = None, set_: SetOpt = None, output_dir: OutOpt = None) -> None:
    """Stage 1 only: supervised fine-tuning of the base model on every domain's (prompt, answer) pairs."""
    from mopd.pipeline import methods as M
    from mopd.pipeline.stages import Domains, cached

    cfg = _pipeline(config, preset, set_)
    out = Path(output_dir or cfg.output_dir)
    _check_output_dir(out)
    try:
        res = cached(out / "sft", lambda: M.sft_init(cfg, Domains.build(cfg), out / "sft"))
    except _bad_input() as e:
        _fail(e)
    console.print(f"SFT init: {res.model_dir}  scores {res.scores}")


@app.command("train-teacher")
def train_teacher(domain: Annotated[str, typer.Argument(help="Domain to train the teacher on.")],
                  config: PipelineArg = None, preset: PresetOpt = None, set_: SetOpt = None,
                  init: Annotated[Optional[str], typer.Option(help="Start model dir (default: the SFT init).")] = None,
                  output_dir: OutOpt = None) -> None:
    """Stage 2 for one domain: GRPO with its verifier (group-normalised rewards, dynamic sampling)."""
    from mopd.pipeline import methods as M
    from mopd.pipeline.stages import Domains, cached

    cfg = _pipeline(config, preset, set_)
    out = Path(output_dir or cfg.output_dir)
    _check_output_dir(out)
    try:
        doms = Domains.build(cfg)
    except (*_bad_input(), ValueError) as e:  # ValueError: an unknown domain kind or params
        _fail(e)
    if domain not in doms.train:
        console.print(f"[red]error:[/red] unknown domain {domain!r}; domains: {list(doms.train)}")
        raise typer.Exit(2)
    try:
        start = init or cached(out / "sft", lambda: M.sft_init(cfg, doms, out / "sft")).model_dir
        res = cached(out / f"teacher_{domain}",
                     lambda: M.domain_teacher(cfg, doms, domain, start, out / f"teacher_{domain}"))
    except _bad_input() as e:
        _fail(e)
    console.print(f"teacher {domain}: {res.model_dir}  scores {res.scores}")


@app.command("eval")
def eval_(model: Annotated[Path, typer.Argument(help="A Hugging Face model directory.")],
          config: PipelineArg = None, preset: PresetOpt = None, set_: SetOpt = None) -> None:
    """Score MODEL on every domain's held-out split: greedy accuracy and pass@1 at temperature 1.
    CONFIG is a pipeline file, or the `mopd distill` config the model was trained with."""
    from mopd.pipeline.stages import Domains, evaluate, load

    unscored: list[str] = []
    if config is not None and _is_run_config(config):
        cfg = _eval_settings(_load(config, set_))
    else:
        cfg = _pipeline(config, preset, set_)
    try:
        m, tok = load(model)
        doms, unscored = Domains.from_run_config(cfg.run) if hasattr(cfg, "run") else (Domains.build(cfg), [])
    except (*_bad_input(), OSError, ValueError) as e:  # only loading here: a bad path or file
        _fail(e)
    if unscored:
        console.print(f"[yellow]not scored[/yellow] (no verifier): {', '.join(unscored)}")
    scores = evaluate(m, tok, cfg, doms)
    table = Table(title=f"held-out scores of {model}")
    for col in ("domain", "greedy", f"pass@1 ({cfg.eval.samples} samples, T=1)"):
        table.add_column(col)
    for d, s in scores.items():
        table.add_row(d, f"{s['greedy']:.3f}", f"{s['pass_at_1']:.3f}")
    wide_console().print(table)


def _is_run_config(path: Path) -> bool:
    """A `mopd distill` config (it names a student) rather than a pipeline file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False  # the pipeline loader reports the file's problem
    return isinstance(data, dict) and "student" in data


def _eval_settings(run: RunConfig):
    """What `evaluate` needs from a run config: its domains, seed and completion length."""
    from types import SimpleNamespace

    from mopd.pipeline.config import EvalStage

    return SimpleNamespace(run=run, seed=run.seed, eval=EvalStage(max_new_tokens=run.sampling.max_new_tokens))


@app.command("merge-lora")
def merge_lora(adapter: Annotated[Path, typer.Argument(help="A LoRA adapter directory (final/ or a checkpoint).")],
               out: Annotated[Path, typer.Argument(help="Where to write the merged Hugging Face model.")],
               base: Annotated[Optional[str], typer.Option(help="The base model (default: the one recorded "
                                                           "beside the adapter).")] = None) -> None:
    """Merge a LoRA adapter into its base model and write a plain Hugging Face directory."""
    from mopd.models.loading import save_pretrained
    from mopd.models.lora import load_merged

    try:
        model, tok = load_merged(adapter, base)
    except (*_bad_input(), OSError, ValueError) as e:
        _fail(e)
    save_pretrained(model, tok, out)
    console.print(f"merged model saved to [bold]{escape(str(out))}[/bold]")


@app.command()
def report(output_dir: Annotated[Path, typer.Argument(help="Directory of a `mopd reproduce` run.")]) -> None:
    """Rebuild report.md / report.json / report.png from the cached stage results of a run."""
    import json

    from mopd.eval.report import write_report

    path = output_dir / "report.json"
    if not path.is_file():
        console.print(f"[red]error:[/red] {path} not found: run `mopd reproduce` first")
        raise typer.Exit(1)
    data = json.loads(path.read_text())
    text = write_report(output_dir, {k: data[k] for k in ("sft", "teachers", "methods")})
    from rich.markdown import Markdown

    wide_console().print(Markdown(text))


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
