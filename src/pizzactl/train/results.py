"""What `train` returns: one `RunResult` per backbone, and the `TrainResult` leaderboard."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pizzactl.results import Result


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


@dataclass(frozen=True, eq=False)
class TrainResult(Result):
    """What `train` did: the leaderboard (best first) and the exported version of the best;
    `as_dict()` is what `train --json` prints (remote training brings it home as that dict)."""

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
