"""Training you can watch and resume: :func:`progress_callback` makes the TrainerCallback SFT and GRPO both add.

- every logging step, one line ``<run>: step s/N, loss …, <elapsed> elapsed, ~<left> left`` goes to the job log
  at once (the harness writes the log line by line) and, at most every :data:`TERMINAL_EVERY_S` seconds (and
  at the first and last step), to the terminal;
- a checkpoint is saved once ``checkpoint_minutes`` of training have passed since the last one (besides every
  ``save_steps`` steps), so a killed job loses at most about that much work, and the checkpoint follows the umask;
- a job stopped by SIGTERM (``scancel``, Snakemake's cancel) or SIGINT writes the last step it reached and its
  last checkpoint to the log before it exits.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from pathlib import Path

from cellduality.io import follow_umask

log = logging.getLogger(__name__)
TERMINAL_EVERY_S = 30.0


def duration(seconds: float) -> str:
    """``1 h 02 min``, ``4 min 05 s``, ``12 s``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class Progress:
    """The state behind the callback (kept apart from transformers so it can be tested without a trainer)."""

    def __init__(self, run: str, checkpoint_minutes: float, clock=time.monotonic, terminal=None) -> None:
        self.run, self.every_s = run, checkpoint_minutes * 60
        self.clock, self.terminal = clock, terminal
        self.start = self.last_save = self.last_print = clock()
        self.step, self.total, self.checkpoint = 0, 0, None
        self.first_step: int | None = None  # where this process started (a resumed job starts later)

    def line(self, step: int, total: int, logs: dict) -> str:
        now = self.clock()
        if self.first_step is None:
            self.first_step = max(step - 1, 0)
        done = step - self.first_step
        left = (now - self.start) / done * (total - step) if done > 0 else float("nan")
        values = ", ".join(f"{key} {logs[key]:.4g}" for key in ("loss", "reward", "kl") if
                           isinstance(logs.get(key), (int, float)))
        return (f"{self.run}: step {step}/{total}{', ' + values if values else ''}, "
                f"{duration(now - self.start)} elapsed, ~{duration(left)} left")

    def on_log(self, step: int, total: int, logs: dict) -> None:
        if "train_runtime" in logs:  # the trainer's closing summary, not a step
            return
        self.step, self.total = step, total
        text = self.line(step, total, logs)
        log.info("%s", text)
        now = self.clock()
        if self.terminal is not None and (now - self.last_print >= TERMINAL_EVERY_S or step in (1, total)):
            print(text, file=self.terminal, flush=True)
            self.last_print = now

    def save_due(self) -> bool:
        return self.clock() - self.last_save >= self.every_s

    def saved(self, folder: Path) -> None:
        self.last_save, self.checkpoint = self.clock(), folder
        if folder.is_dir():
            follow_umask(folder)

    def stopped(self, why: str) -> str:
        where = f"last checkpoint {self.checkpoint}" if self.checkpoint else "no checkpoint saved by this job"
        return f"{self.run}: stopped ({why}) at step {self.step} of {self.total}; {where}"


def progress_callback(run: str, checkpoint_minutes: float):
    """A transformers TrainerCallback doing what the module notes say for run ``run`` (e.g. ``sft_rep0``); call its
    ``restore()`` after training (a ``finally``) to put back the signal handlers it set."""
    from transformers import TrainerCallback

    class WatchableTraining(TrainerCallback):
        def __init__(self) -> None:
            self.progress = Progress(run, checkpoint_minutes, terminal=sys.__stderr__)
            self._previous: dict[int, object] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            for number in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._previous[number] = signal.signal(number, self._stop)
                except ValueError:  # not the main thread: leave the signals alone
                    pass

        def _stop(self, number, frame):
            log.warning("%s", self.progress.stopped(signal.Signals(number).name))
            previous = self._previous.get(number)
            if callable(previous):
                previous(number, frame)
            raise SystemExit(128 + number)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.progress.on_log(state.global_step, state.max_steps, logs or {})

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress.save_due():
                control.should_save = True

        def on_save(self, args, state, control, **kwargs):
            self.progress.saved(Path(args.output_dir) / f"checkpoint-{state.global_step}")

        def on_train_end(self, args, state, control, **kwargs):
            log.info("%s: finished at step %d of %d", run, state.global_step, state.max_steps)
            self.restore()

        def restore(self) -> None:
            """Put back the signal handlers it replaced (also when training ended with an exception)."""
            for number, previous in self._previous.items():
                signal.signal(number, previous)
            self._previous.clear()

    return WatchableTraining()
