"""SIGINT / SIGTERM during training: finish the current step, save a checkpoint, stop.

A signal only sets a flag; the loop checks it between steps, where the model, optimiser and
data position agree, so the checkpoint it then writes resumes exactly. The first signal puts
the previous handlers back, so a second Ctrl-C (or SIGTERM) stops at once, without saving.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving `checkpoint` at `step`.

    A KeyboardInterrupt, so that code which lets Ctrl-C through lets this through too.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                         f"checkpoint saved to {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopOnSignal:
    """Context manager: `.signum` becomes the first SIGINT/SIGTERM received, else None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        # Handlers can only be set from the main thread; elsewhere signals keep their defaults.
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()
        log.warning("%s received: saving a checkpoint after this step, then stopping "
                    "(send it again to stop now, without saving)", signal.Signals(signum).name)

    def _restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()
