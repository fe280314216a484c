"""Progress a person can follow: where a run is, how fast it goes, and how long is left.

In a terminal Keras draws its progress bar within each epoch. In a log file (no terminal)
`ProgressLog` writes a line about every minute (step, examples/s, loss, time left), and
every stage's epoch end says how long the stage and the whole run still need, measured on
the steps trained so far (`RunClock`, shared by the stages of an `Experiment`).
"""

from __future__ import annotations

import logging
import sys
import time

import keras
import numpy as np

logger = logging.getLogger("mtkd_tf")


def is_terminal() -> bool:
    """Whether Keras's output goes to a terminal (a progress bar there; lines in a log)."""
    return sys.stdout.isatty()


def keras_verbose(verbose: int) -> int:
    """`TrainingConfig.verbose` as Keras's: -1 (auto) is a bar in a terminal, silence in a log."""
    if verbose >= 0:
        return verbose
    return 1 if is_terminal() else 0


def duration(seconds: float) -> str:
    """`3 h 05 min`, `12 min 30 s` or `40 s`."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class RunClock:
    """Training steps planned and done over all stages of a run, and the measured time per step."""

    def __init__(self) -> None:
        self.planned = 0
        self.done = 0
        self.seconds = 0.0  # wall time of the steps done in this process
        self.steps_timed = 0

    def plan(self, steps: int) -> None:
        self.planned += steps

    def record(self, steps: int, seconds: float) -> None:
        self.done += steps
        self.steps_timed += steps
        self.seconds += seconds

    def skip(self, steps: int) -> None:
        """Steps that need no training here (a finished stage, or a resumed run's past)."""
        self.done += steps

    def time_left(self) -> float | None:
        if not self.steps_timed:
            return None
        return max(self.planned - self.done, 0) * self.seconds / self.steps_timed


class ProgressLog(keras.callbacks.Callback):
    """Writes where training is: a line every `every_seconds` in a log (not in a terminal, where
    Keras's bar does it), and at each epoch end the time left for the stage and the run."""

    def __init__(
        self,
        label: str,
        total_steps: int,
        start_step: int,
        batch_size: int,
        every_seconds: float = 60.0,
        clock: RunClock | None = None,
        lines: bool | None = None,
    ):
        super().__init__()
        self.label = label
        self.total_steps = total_steps
        self.step = start_step
        self.batch_size = batch_size
        self.every_seconds = every_seconds
        self.clock = clock
        self.lines = (not is_terminal()) if lines is None else lines
        self.losses: list[float] = []
        self._started = self._last_line = self._last_step_time = None
        self._steps_here = 0

    def on_train_begin(self, logs=None):
        self._started = self._last_line = self._last_step_time = time.time()

    def _rate(self) -> float:
        elapsed = time.time() - self._started
        return self._steps_here / elapsed if elapsed > 0 else 0.0

    def on_train_batch_end(self, batch, logs=None):
        now = time.time()
        self.step += 1
        self._steps_here += 1
        if self.clock is not None:
            self.clock.record(1, now - self._last_step_time)
        self._last_step_time = now
        loss = (logs or {}).get("loss")
        if loss is not None:
            self.losses.append(float(np.asarray(loss).reshape(-1)[0]))
        if self.lines and self.every_seconds and now - self._last_line >= self.every_seconds:
            self._last_line = now
            rate = self._rate()
            left = (self.total_steps - self.step) / rate if rate else 0.0
            logger.info(
                "%s: step %d/%d, %.1f examples/s, loss %.4f, %s left in this stage",
                self.label,
                self.step,
                self.total_steps,
                rate * self.batch_size,
                self.losses[-1] if self.losses else float("nan"),
                duration(left),
            )

    def on_epoch_end(self, epoch, logs=None):
        rate = self._rate()
        if not rate:
            return
        stage_left = (self.total_steps - self.step) / rate
        run_left = self.clock.time_left() if self.clock is not None else None
        logger.info(
            "%s: epoch %d done (step %d/%d, %.1f examples/s); %s left in this stage%s",
            self.label,
            epoch + 1,
            self.step,
            self.total_steps,
            rate * self.batch_size,
            duration(stage_left),
            f", about {duration(run_left)} left for the run" if run_left is not None else "",
        )
