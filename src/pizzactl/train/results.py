"""What `train` returns: one `RunResult` per backbone, and the `TrainResult` leaderboard."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunResult:
    """One backbone's training run."""

    run_id: str
    run_dir: Path
    backbone: str
    metrics: dict
    config: dict
    train_seconds: float

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics["val_accuracy"])

    def as_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "backbone": self.backbone,
            "weights": self.config.get("weights"),
            "image_size": self.config.get("image_size"),
            "val_accuracy": m.get("val_accuracy"),
            "val_f1": m.get("val_f1"),
            "val_roc_auc": m.get("val_roc_auc"),
            "val_loss": m.get("val_loss"),
            "train_seconds": self.train_seconds,
        }


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: the leaderboard (best first) and the exported version of the best."""

    leaderboard: tuple[RunResult, ...]
    model_dir: Path | None
    total_seconds: float
    classes: tuple[str, ...] = ()
    features: dict = field(default_factory=dict)  # {"computed": n, "reused": n} feature-cache views

    @property
    def best(self) -> RunResult:
        return self.leaderboard[0]

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "run_id": best.run_id,
            "run_dir": str(best.run_dir),
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "version": int(self.model_dir.name) if self.model_dir and self.model_dir.name.isdigit() else None,
            "backbone": best.backbone,
            "weights": best.config.get("weights"),
            "image_size": best.config.get("image_size"),
            "classes": list(self.classes),
            "val_accuracy": best.val_accuracy,
            "train_seconds": best.train_seconds,
            "total_seconds": self.total_seconds,
            "metrics": best.metrics,
            "features": self.features,
            "leaderboard": [r.as_dict() for r in self.leaderboard],
        }


def rank(result: RunResult):
    """Leaderboard order: higher validation accuracy, then lower validation loss, then faster."""
    m = result.metrics
    return (-m["val_accuracy"], m.get("val_loss", 0.0), result.train_seconds)


def print_result(result: TrainResult | dict[str, Any]) -> None:
    """The leaderboard and where the version landed; from a TrainResult or its dict (what
    `train --on docker|kind|CONTEXT` brings home as the trainer's `--json` answer)."""
    from rich.table import Column, Table

    from pizzactl.console import out

    data = result.as_dict() if isinstance(result, TrainResult) else result
    macro = len(data.get("classes") or ()) > 2  # F1 and ROC AUC are then macro averages over the classes
    table = Table(
        "#",
        "backbone",
        "val acc",
        "macro f1" if macro else "f1",
        "macro auc" if macro else "roc auc",
        "val loss",
        "seconds",
        Column("run", no_wrap=True),
    )
    for i, run in enumerate(data.get("leaderboard") or [], 1):
        table.add_row(
            str(i),
            str(run.get("backbone")),
            _number(run.get("val_accuracy")),
            _number(run.get("val_f1")),
            _number(run.get("val_roc_auc")),
            _number(run.get("val_loss")),
            f"{run.get('train_seconds') or 0:.1f}",
            str(run.get("run_id")),
        )
    out.print(table)
    where = (data.get("trained_on") or {}).get("on")
    if data.get("model_dir"):
        trained_on = f", trained on {where}" if where else ""
        out.print(
            f"Exported {data.get('backbone')} ({_number(data.get('val_accuracy'))} val accuracy{trained_on}) "
            f"to {data['model_dir']}"
        )
    if data.get("deployed"):
        out.print(f"Rolled out to {data['deployed'].get('target')}: {data['deployed'].get('url')}")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
