"""Evaluate an *exported* model the way serving will run it: raw file bytes into `serving_default`.

Going through the exported version rather than the Keras model catches every train/serve skew
(decoding, resizing, preprocessing, threshold) before a user does. It runs on the runtime the
builtin model server would pick (`model_runtime`, default `auto`: the fastest artefact export
checked, e.g. LiteRT), or the one asked for, so its accuracy is that of what is served. The metrics are computed
by `pizzactl.train.metrics`, the same code that scores validation during training.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pizzactl.console import err, log
from pizzactl.data.dataset import load_dataset
from pizzactl.data.download import resolve_data_dir
from pizzactl.errors import BadInputError, DataError
from pizzactl.model.card import ModelCard
from pizzactl.model.runtimes import SIGNATURE, load_runtime, require_runtimes, usable_cpus
from pizzactl.model.store import resolve_model_dir
from pizzactl.results import Result
from pizzactl.serving.modelserver.batching import isolate_failures
from pizzactl.train.metrics import classification_metrics
from pizzactl.train.plots import confusion_matrix

BATCH_SIZE = 32
CONFUSION_ORDER = "rows are the true class, columns the predicted class, both in `classes` order"


@dataclass(frozen=True, eq=False)
class Evaluation(Result):
    """What `evaluate` measured. Two classes: precision, recall and F1 are the positive class's;
    more: macro averages. `roc_auc` is None when only one class is present."""

    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    macro_f1: float
    roc_auc: float | None
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted, both in `classes` order
    per_class: Mapping[str, Mapping[str, Any]]  # {class: {precision, recall, f1, support, roc_auc}}
    model_dir: str
    version: int | None
    backbone: str | None
    runtime: str
    data_dir: str
    data_hash: str
    training_data: bool  # the data the model was trained on: expect optimistic numbers
    classes: list[str]
    positive_class: str | None
    threshold: float | None
    misclassified: int
    failed: list[dict[str, str]] = field(default_factory=list)  # {path, error}: images the model could not decode
    errors_csv: str | None = None
    confusion_matrix_png: str | None = None
    images_per_second: float | None = None
    confusion_matrix_order: str = CONFUSION_ORDER

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _predict_batch(runtime, blobs: list[bytes], paths: list[Path], failed: list[dict]):
    """(probability, label, probabilities) per image of one batch, and the indices kept; an
    undecodable image is set aside, not fatal. A binary model exported before `probabilities`
    existed gets (1 - p, p)."""

    (name,) = runtime.input_names(SIGNATURE)

    def run(batch: list[bytes]) -> list[tuple[float, str, list[float]]]:
        res = runtime.run(SIGNATURE, {name: batch})
        p = res["probability"].tolist()
        rows = res["probabilities"].tolist() if "probabilities" in res else [[1.0 - q, q] for q in p]
        return list(zip(p, [x.decode() for x in res["label"]], rows, strict=True))

    answers, kept = [], []
    outcomes = isolate_failures(run, [[blob] for blob in blobs], BadInputError)
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            failed.append({"path": str(paths[i]), "error": getattr(outcome, "message", str(outcome)).splitlines()[0]})
            continue
        answers.append(outcome[0])
        kept.append(i)
    return answers, kept


def _write_errors(path: Path, errors: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "true", "predicted", "probability"])
        writer.writeheader()
        writer.writerows({**e, "probability": f"{e['probability']:.6f}"} for e in errors)


def load_for_evaluation(version_dir: Path, wanted: str):
    """The version on the runtime asked for (`auto`: the model server's choice), with every CPU."""

    if wanted != "auto":
        require_runtimes(version_dir, [wanted])
    version = int(version_dir.name) if version_dir.name.isdigit() else 0
    return load_runtime(version_dir, version, wanted, threads=usable_cpus())


def _run_model(runtime, records: list, progress: bool) -> tuple[list, list[dict]]:
    """`serving_default` over the records in batches: [(record, (probability, label, probabilities))]
    for the images it answered, and the ones it could not decode."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    answered: list = []
    failed: list[dict] = []
    with Progress(
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("evaluate", total=len(records))
        for start in range(0, len(records), BATCH_SIZE):
            batch = records[start : start + BATCH_SIZE]
            blobs, paths = [r.path.read_bytes() for r in batch], [r.path for r in batch]
            answers, kept = _predict_batch(runtime, blobs, paths, failed)
            answered += [(batch[i], answer) for i, answer in zip(kept, answers, strict=True)]
            bar.advance(task, len(batch))
    return answered, failed


def evaluate(
    settings,
    model_dir: Path | str | None = None,
    errors_csv: Path | str | None = None,
    *,
    confusion_png: Path | str | None = None,
    progress: bool = True,
) -> Evaluation:
    """Run the exported `serving_default` on every image of the dataset and report metrics.

    `model_dir` is a version directory (default: the latest under `settings.models_dir`);
    the data is `settings.data_dir` (or the downloaded dataset), whose class folders must be
    among the model's classes; the runtime is `settings.model_runtime`. `errors_csv` receives the misclassified images (path, true,
    predicted, probability); `confusion_png` the confusion matrix as a picture.
    """
    version_dir = resolve_model_dir(model_dir, settings.models_dir)  # before TF: a missing model fails fast
    card = ModelCard.load(version_dir)
    classes = list(card.classes)
    binary = len(classes) == 2
    threshold = float(card.threshold or 0.5) if binary else None

    dataset = load_dataset(resolve_data_dir(settings))
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown:
        raise DataError(
            f"The dataset's class folder(s) {unknown} are not among the model's classes {classes}.",
            hint=f"Point --data at a folder whose sub-folders are some of: {', '.join(classes)}.",
        )
    records = list(dataset.records)

    runtime = load_for_evaluation(version_dir, settings.model_runtime)
    started = time.perf_counter()
    answered, failed = _run_model(runtime, records, progress)
    seconds = time.perf_counter() - started
    if not answered:
        raise DataError(
            f"None of the {len(records)} images in {dataset.root} could be decoded by the model.",
            hint="Use JPEG, PNG, GIF or BMP files.",
        )
    y_true = [classes.index(r.class_name) for r, _ in answered]
    # P(classes[1]) for a binary model, the row of probabilities for more classes
    y_prob = [p if binary else row for _, (p, _, row) in answered]
    metrics = classification_metrics(y_true, y_prob, threshold or 0.5, classes)
    errors = [
        {"path": str(r.path), "true": r.class_name, "predicted": label, "probability": p}
        for r, (p, label, _) in answered
        if label != r.class_name
    ]
    if confusion_png is not None:
        Path(confusion_png).parent.mkdir(parents=True, exist_ok=True)
        confusion_matrix(metrics["confusion_matrix"], classes, Path(confusion_png), title="confusion matrix")
    if errors_csv is not None:
        _write_errors(Path(errors_csv), errors)
    for item in failed:
        log(f"[yellow]skipped[/] {item['path']}: {item['error']}")
    same_data = bool(card.data_hash) and card.data_hash == dataset.data_hash
    return Evaluation(
        **metrics,
        model_dir=str(version_dir),
        version=int(version_dir.name) if version_dir.name.isdigit() else None,
        backbone=card.backbone,
        runtime=runtime.name,
        data_dir=str(dataset.root),
        data_hash=dataset.data_hash,
        training_data=same_data,
        classes=classes,
        positive_class=classes[1] if binary else None,
        threshold=threshold,
        confusion_matrix_png=str(confusion_png) if confusion_png is not None else None,
        misclassified=len(errors),
        errors_csv=str(errors_csv) if errors_csv is not None else None,
        failed=failed,
        images_per_second=round(len(answered) / seconds, 1) if seconds > 0 else None,
    )
