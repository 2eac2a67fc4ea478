"""TensorBoard event files for a run: `runs/<id>/tensorboard/{train,validation}/`.

`tensorboard --logdir runs` then shows every run side by side: for each phase (`head`,
`fine_tune`, `scratch`) the loss and accuracy of every epoch, training and validation on one
chart (the two sub-directories are TensorBoard's "runs", as Keras' own callback lays them
out), the learning rate, the run's final validation figures, its config, and the validation
confusion matrix as an image. Written with TensorFlow's own `tf.summary` as training goes, so
a run shows up while it trains; the `tensorboard` package (in the [train] extra) is only
needed to look at them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRAIN, VALIDATION = "train", "validation"


class Board:
    """One run's TensorBoard writers, created on first use."""

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.logdir / name))
        return self._writers[name]

    def scalars(self, split: str, values: dict[str, float], step: int) -> None:
        import tensorflow as tf

        with self._writer(split).as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, float(value), step=step)
        self._writer(split).flush()

    def epoch(self, row: dict[str, Any]) -> None:
        """One history.csv row: `val_*` to the validation writer, the rest to the training one."""
        phase, step = row["phase"], int(row["epoch"])
        split: dict[str, dict[str, float]] = {TRAIN: {}, VALIDATION: {}}
        for key, value in row.items():
            if key in ("phase", "epoch") or value is None:
                continue
            target, name = (VALIDATION, key[4:]) if key.startswith("val_") else (TRAIN, key)
            split[target][f"{phase}/{name}"] = value
        for name, values in split.items():
            if values:
                self.scalars(name, values, step)

    def image(self, tag: str, png: bytes, step: int = 0) -> None:
        import tensorflow as tf

        with self._writer(VALIDATION).as_default():
            tf.summary.image(tag, tf.image.decode_png(png, channels=3)[tf.newaxis], step=step)
        self._writer(VALIDATION).flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        import tensorflow as tf

        with self._writer(TRAIN).as_default():
            tf.summary.text(tag, text, step=step)
        self._writer(TRAIN).flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def summarize_run(board: Board | None, run_dir: Path, metrics: dict[str, Any], config: dict[str, Any]) -> None:
    """What a finished run adds: its final validation figures, config and confusion matrix."""
    if board is None:
        return
    final = {
        f"final/{k}": v
        for k, v in metrics.items()
        if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    board.scalars(VALIDATION, final, step=0)
    board.text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```")
    png = run_dir / "confusion_matrix.png"
    if png.is_file():
        board.image("confusion_matrix", png.read_bytes())
