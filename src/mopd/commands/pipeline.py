"""The pipeline's commands: `mopd reproduce`, `sft`, `train-teacher`, `eval`, `report`."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mopd.commands.common import (SetOpt, _bad_input, _check_output_dir, _fail, _load, app, console,
                                  wide_console)
from mopd.config.load import ConfigError, load_config
from mopd.config.schema import RunConfig
from mopd.pipeline.presets import PRESETS


def _pipeline(config: Optional[Path], preset: Optional[str], overrides: list[str] | None):
    from mopd.pipeline.config import PipelineConfig

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
    help="A built-in pipeline: " + ", ".join(PRESETS) + " (docs/configuration.md#the-pipeline-config).")]
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


@app.command()
def report(output_dir: Annotated[list[Path], typer.Argument(help="Directory of a `mopd reproduce` run; several: "
                                                            "seeds of one experiment, merged.")],
           out: Annotated[Optional[Path], typer.Option(help="Where the merged report of several runs goes.")] = None
           ) -> None:
    """Rebuild report.md / report.json / report.png from the cached stage results of a run, or merge
    the runs of several seeds into one report (mean and std over seeds) under --out."""
    import json

    from mopd.eval.report import write_report

    for d in output_dir:
        if not (d / "report.json").is_file():
            console.print(f"[red]error:[/red] {d / 'report.json'} not found: run `mopd reproduce` first")
            raise typer.Exit(1)
    if len(output_dir) > 1:
        from mopd.eval.seeds_report import write_merged_report

        if out is None:
            console.print("[red]error:[/red] several runs are merged into one report: give --out DIR")
            raise typer.Exit(2)
        text = write_merged_report(output_dir, out)
    else:
        data = json.loads((output_dir[0] / "report.json").read_text())
        text = write_report(output_dir[0], {k: data[k] for k in data if k not in ("rows", "curves", "one_seed")})
    from rich.markdown import Markdown

    wide_console().print(Markdown(text))
