"""Re-export a training run (`runs/<id>/model.keras` + config.json + metrics.json) as a new
model version, with the run's own photos for the checks when they are still there.

Training's side of `pizzactl export RUN`: it reads a run directory and the dataset, which the
model contract (`pizzactl.model.export`) knows nothing of, and hands the classifier to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pizzactl.data.dataset import load_dataset, stratified_split
from pizzactl.errors import ExportError, ModelNotFoundError, PizzaError
from pizzactl.model.contract import DEFAULT_CLASSES
from pizzactl.model.export import export_model, infer_image_size
from pizzactl.model.store import find_run_dir
from pizzactl.train.backbones import custom_objects


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}).", hint="Train the run again.") from None


def _lookup(key: str, *sources: dict, default=None):
    for source in sources:
        for place in (source, source.get("settings") or {}, source.get("config") or {}):
            if isinstance(place, dict) and place.get(key) is not None:
                return place[key]
    return default


def run_check_images(config: dict, per_class: int = 2) -> list[bytes]:
    """A few real images from the run's dataset, if it is still there (else [])."""
    data_dir = _lookup("data_dir", config)
    if not data_dir or not Path(data_dir).is_dir():
        return []
    images: list[bytes] = []
    for class_dir in sorted(p for p in Path(data_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        images.extend(p.read_bytes() for p in files[:per_class])
    return images


def load_run_classifier(run_dir: Path):
    """The run's full classifier (`model.keras`), with pizzactl's custom layers registered."""
    path = run_dir / "model.keras"
    if not path.is_file():
        raise ModelNotFoundError(
            f"{run_dir} has no model.keras (the run did not finish?).", hint="Train again with `pizzactl train`."
        )
    import keras

    try:
        return keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    except Exception as exc:  # keras raises many types for a bad archive
        raise ExportError(
            f"Cannot load {path}: {type(exc).__name__}: {exc}", hint="Train the run again; the file may be damaged."
        ) from None


def export_run(settings, run_id_or_dir: str | Path) -> Path:
    """Re-export a training run (`runs/<id>/model.keras` + config.json + metrics.json) as a new version."""
    run_dir = find_run_dir(settings, run_id_or_dir)
    config = _read_json(run_dir / "config.json")
    metrics = _read_json(run_dir / "metrics.json")
    classifier = load_run_classifier(run_dir)
    metadata = {
        "backbone": _lookup("backbone", config),
        "weights": _lookup("weights", config),
        "image_size": _lookup("image_size", config, metrics) or infer_image_size(classifier),
        "classes": _lookup("classes", config, metrics, default=list(DEFAULT_CLASSES)),
        "threshold": float(_lookup("threshold", config, metrics, default=0.5)),
        "data_hash": _lookup("data_hash", config, metrics),
        "metrics": {k: v for k, v in metrics.items() if k != "model_dir"},  # model_dir: where it was exported before
        "run_id": _lookup("run_id", config, default=run_dir.name),
    }
    if _lookup("tta", config) is not None:
        metadata["tta"] = _lookup("tta", config)
    calibration, holdout = run_split(config)
    return export_model(
        classifier, settings.models_dir, metadata, run_check_images(config), holdout=holdout, calibration=calibration
    )


def run_split(config: dict, calibration_size: int = 100) -> tuple[list[bytes], list[tuple[bytes, int]]]:
    """The run's own split, if its data is still there: some training images (to calibrate int8
    ranges on) and the validation images with their class index (to check accuracy on); else ([], [])."""
    data_dir = _lookup("data_dir", config)
    if not data_dir or not Path(data_dir).is_dir():
        return [], []
    try:
        dataset = load_dataset(data_dir, check=False)
        if dataset.data_hash != _lookup("data_hash", config, default=dataset.data_hash):
            return [], []  # the photos changed: the old validation images may now be training ones
        train, val = stratified_split(
            dataset, float(_lookup("val_split", config, default=0.2)), int(_lookup("seed", config, default=42))
        )
    except PizzaError:
        return [], []
    return [r.path.read_bytes() for r in calibration_records(train, calibration_size)], [
        (r.path.read_bytes(), r.label) for r in val
    ]


def calibration_records(train: Sequence, n: int = 100) -> list:
    """About `n` training records for int8's ranges: every class in its share of the split, evenly
    spread within it, the classes interleaved so that any first part of the list has them all.

    The split lists its records class by class: the first part of a stride over it is one class,
    and export used to calibrate on the first 100 images it was given (issue 25: asked for 400,
    int8 was calibrated on not_pizza photos only and answered not_pizza for every photo).
    """
    by_class: dict[int, list] = {}
    for record in train:
        by_class.setdefault(record.label, []).append(record)
    picked = []
    for records in by_class.values():
        k = min(len(records), max(1, round(n * len(records) / max(1, len(train)))))
        picked.append([records[i * len(records) // k] for i in range(k)])
    # each class's records at their relative place (i / k): the classes interleave in proportion
    placed = [(i / len(records), c, record) for c, records in enumerate(picked) for i, record in enumerate(records)]
    return [record for _, _, record in sorted(placed, key=lambda x: (x[0], x[1]))]
