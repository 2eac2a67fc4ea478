"""Training runs on disk: `runs/<id>/{config.json, metrics.json, history.csv, *.png, train.log, model.keras}`.

Reading runs needs no TensorFlow: `pizzactl runs list` is instant however many runs there are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pizzactl.model.store import find_run_dir


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _summary(run_dir: Path) -> dict[str, Any]:
    config = _read(run_dir / "config.json")
    metrics = _read(run_dir / "metrics.json")
    return {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "created": config.get("created"),
        "backbone": config.get("backbone"),
        "weights": config.get("weights"),
        "image_size": config.get("image_size"),
        "mode": config.get("mode"),
        "status": "finished" if metrics and (run_dir / "model.keras").is_file() else "incomplete",
        "val_accuracy": metrics.get("val_accuracy"),
        "val_f1": metrics.get("val_f1"),
        "val_roc_auc": metrics.get("val_roc_auc"),
        "train_seconds": metrics.get("train_seconds"),
        "model_dir": metrics.get("model_dir"),
    }


def list_runs(settings) -> list[dict[str, Any]]:
    """Every run under `settings.runs_dir`, newest first (by creation time, then id)."""
    runs_dir = Path(settings.runs_dir).expanduser()
    if not runs_dir.is_dir():
        return []
    runs = [_summary(p) for p in runs_dir.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(runs, key=lambda r: (r["created"] or "", r["run_id"]), reverse=True)


def show_run(settings, run_id: str) -> dict[str, Any]:
    """One run: its summary, full config and metrics, and the files in it.

    `run_id` may be a unique prefix or a run directory; an unknown or ambiguous one raises
    `RunNotFoundError` with a hint.
    """
    run_dir = find_run_dir(settings, run_id)
    return {
        **_summary(run_dir),
        "config": _read(run_dir / "config.json"),
        "metrics": _read(run_dir / "metrics.json"),
        "files": sorted(p.name for p in run_dir.iterdir() if p.is_file()),
    }
