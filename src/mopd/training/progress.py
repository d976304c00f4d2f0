"""A rich progress bar for training steps, showing the headline metrics as they move."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

SHOWN = (("reverse_kl/all", "kl"), ("reward/all", "reward"), ("loss", "loss"), ("tokens_per_s", "tok/s"))


class StepProgress:
    def __init__(self, name: str, total: int, start: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task = self.progress.add_task(name, total=total, completed=start, info="")

    def __enter__(self) -> "StepProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, metrics: dict[str, float]) -> None:
        info = "  ".join(f"{label} {metrics[k]:.3g}" for k, label in SHOWN if k in metrics)
        self.progress.update(self.task, advance=1, info=info)
