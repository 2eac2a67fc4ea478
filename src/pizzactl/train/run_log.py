"""A run's log: each line to the run's train.log and to stderr, progress bars, one line per epoch
(and, with a TensorBoard directory, each epoch's figures as TensorBoard scalars)."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from pathlib import Path

from pizzactl.console import err
from pizzactl.train.tensorboard import Board


class RunLog:
    """Writes each line to the run's train.log and to stderr; owns the progress bars and the run's
    TensorBoard writers (`board`, when given a `tensorboard` directory)."""

    def __init__(self, path: Path | None, show_progress: bool = True, tensorboard: Path | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.path = path
        self.board = Board(tensorboard) if tensorboard is not None else None
        self._fh = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 - closed by close()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not show_progress,
        )

    def __enter__(self) -> RunLog:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        if self._fh:
            self._fh.close()
        if self.board:
            self.board.close()

    def epoch(self, row: dict) -> None:
        """An epoch's figures (a history.csv row) to TensorBoard."""
        if self.board:
            self.board.epoch(row)

    def __call__(self, message: str) -> None:
        if self._fh:
            stamp = _dt.datetime.now(_dt.UTC).strftime("%H:%M:%S")
            self._fh.write(f"{stamp} {message}\n")
            self._fh.flush()
        self.progress.console.print(message, highlight=False, markup=False)

    def bar(self, description: str, total: int) -> Callable[[int], None]:
        """A progress bar; returns `advance(n)`. The bar disappears when it is full."""
        task = self.progress.add_task(description, total=total)
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n
            if done[0] >= total:
                self.progress.remove_task(task) if task in self.progress.task_ids else None
            else:
                self.progress.advance(task, n)

        return advance


def epoch_logger(phase: str, total_epochs: int, runlog: RunLog, rows: list, steps: int | None = None):
    """A Keras callback: one line per epoch (stderr and train.log), one row per epoch for history.csv."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()
            self._advance = runlog.bar(f"{phase} epoch {epoch + 1}/{total_epochs}", steps) if steps else None

        def on_train_batch_end(self, batch, logs=None):
            if self._advance:
                self._advance(1)

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            lr = logs.pop("learning_rate", None)
            if lr is None:
                try:
                    lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                except Exception:  # pragma: no cover - schedules without a value
                    lr = None
            row = {"phase": phase, "epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}, "learning_rate": lr}
            rows.append(row)
            record = getattr(runlog, "epoch", None)  # a bare callable logger has no TensorBoard
            if record:
                record(row)
            shown = "  ".join(f"{k} {float(v):.4f}" for k, v in logs.items())
            runlog(f"[{phase}] epoch {epoch + 1}/{total_epochs}  {shown}  ({time.perf_counter() - self._start:.1f}s)")

    return EpochLog()
