"""Writing a run directory: `runs/<UTC time>-<backbone>/`.

config.json is written before training starts (an interrupted run still says what it was);
model.keras, history.csv, metrics.json and the plots when it ends; train.log and tensorboard/
as it goes (`run_log.RunLog`, `tensorboard.Board`). `runs.py` reads them back without TensorFlow.
"""

from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path

from pizzactl.errors import UsageError
from pizzactl.files import write_json
from pizzactl.train import plots

HISTORY_COLUMNS = ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]


def new_run_dir(runs_dir: Path, backbone: str) -> Path:
    """`runs/<UTC time>-<backbone>`, made unique with a counter if two start in the same second."""
    runs_dir = Path(runs_dir).expanduser()
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = runs_dir / (f"{stamp}-{backbone}" if n == 1 else f"{stamp}-{backbone}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UsageError(f"Cannot create a run directory in {runs_dir}.")  # pragma: no cover


def write_history(path: Path, rows: list[dict]) -> None:
    """One row per epoch of every phase; the usual columns first, any others after them."""
    columns = HISTORY_COLUMNS + sorted({k for r in rows for k in r} - set(HISTORY_COLUMNS))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_results(run_dir: Path, *, classifier, metrics: dict, history: list[dict], classes, log) -> None:
    """The trained model, its epochs, its metrics and the plots of both."""

    classifier.save(run_dir / "model.keras")
    write_history(run_dir / "history.csv", history)
    write_json(run_dir / "metrics.json", metrics)
    try:
        plots.training_curves(history, run_dir / "training_curves.png", title=run_dir.name)
        plots.confusion_matrix(metrics["confusion_matrix"], list(classes), run_dir / "confusion_matrix.png")
    except Exception as exc:  # plots are a convenience; never lose a trained model over them
        log(f"Could not draw plots: {type(exc).__name__}: {exc}")
