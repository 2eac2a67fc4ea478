"""Training: `train(settings)` is what `pizzactl train` runs; a notebook can call it the same way:

    from pizzactl.config import load_settings
    from pizzactl.train import train
    result = train(load_settings({"data_dir": "data/pizza_not_pizza", "backbone": "efficientnet_lite2"}))
    result.best.metrics["val_accuracy"], result.model_dir

For each backbone asked for, `train` plans the run (`context.plan`: the recipe's defaults, the
user's flags), picks a strategy (`strategies.choose`), runs it, writes the run directory
(`run_dir`) and ranks the runs; the best one is exported as a new model version.

Nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

import time
from pathlib import Path

from pizzactl.data.dataset import load_dataset, stratified_split
from pizzactl.data.download import resolve_data_dir
from pizzactl.errors import UsageError
from pizzactl.files import write_json
from pizzactl.model.export import export_model
from pizzactl.tfimport import require_training
from pizzactl.train.backbones import get_backbone, resolve_weights
from pizzactl.train.context import plan, run_config
from pizzactl.train.features import FeatureCache
from pizzactl.train.metrics import validation_metrics
from pizzactl.train.reexport import calibration_records
from pizzactl.train.results import RunResult, TrainResult, rank
from pizzactl.train.run_dir import new_run_dir, write_results
from pizzactl.train.run_log import RunLog
from pizzactl.train.strategies import STRATEGIES, choose
from pizzactl.train.tensorboard import summarize_run

__all__ = ["RunResult", "TrainResult", "train", "train_one"]


def train(settings, *, show_progress: bool = True) -> TrainResult:
    """Train every backbone in `settings.backbone` (comma-separated), export the best one."""

    require_training()  # sets TensorFlow's log level (tfimport.quiet_tf_logs) before importing it  # before any download or scan

    start = time.perf_counter()
    names = [n.strip() for n in str(settings.backbone).split(",") if n.strip()]
    if not names:
        raise UsageError("No backbone given.", hint="Pass --backbone NAME (or several: a,b,c).")
    backbones = [get_backbone(n) for n in dict.fromkeys(names)]
    for backbone in backbones:
        resolve_weights(settings.weights, backbone, explicit=settings.explicit("weights"))  # fail before any work
    dataset = load_dataset(resolve_data_dir(settings))
    train_records, val_records = stratified_split(dataset, settings.val_split, settings.seed)
    cache = FeatureCache(Path(settings.cache_dir).expanduser() / "features")
    trained = [
        train_one(settings, backbone, dataset, train_records, val_records, cache=cache, show_progress=show_progress)
        for backbone in backbones
    ]
    trained.sort(key=lambda pair: rank(pair[0]))
    best, best_classifier = trained[0]
    metadata = {
        "backbone": best.backbone,
        "weights": best.config["weights"],
        "image_size": best.config["image_size"],
        "classes": list(dataset.classes),
        "threshold": best.config["threshold"],
        "metrics": best.metrics,
        "data_hash": dataset.data_hash,
        "run_id": best.run_id,
        "tta": best.config["tta"],
    }
    model_dir = export_model(
        best_classifier,
        settings.models_dir,
        metadata,
        _check_images(val_records),
        holdout=[(r.path.read_bytes(), r.label) for r in val_records],  # checks the fast runtimes' accuracy
        calibration=[r.path.read_bytes() for r in calibration_records(train_records)],
    )
    metrics = dict(best.metrics, model_dir=str(model_dir))
    write_json(best.run_dir / "metrics.json", metrics)
    leaderboard = (
        RunResult(best.run_id, best.run_dir, best.backbone, metrics, best.config, best.train_seconds),
        *(result for result, _ in trained[1:]),
    )
    return TrainResult(
        leaderboard=leaderboard,
        model_dir=model_dir,
        total_seconds=round(time.perf_counter() - start, 2),
        classes=dataset.classes,
        features={"computed": len(cache.computed), "reused": len(cache.reused)},
    )


def train_one(settings, backbone, dataset, train_records, val_records, *, cache, show_progress: bool = True):
    """Train `backbone` on the split into a new run directory; returns (RunResult, classifier)."""
    import keras

    start = time.perf_counter()
    run_dir = new_run_dir(settings.runs_dir, backbone.name)
    with RunLog(run_dir / "train.log", show_progress, tensorboard=run_dir / "tensorboard") as log:
        ctx = plan(settings, backbone, dataset, train_records, val_records, cache=cache, log=log)
        strategy = choose(ctx)
        config = run_config(ctx, settings, run_dir.name, strategy)
        write_json(run_dir / "config.json", config)
        keras.utils.set_random_seed(ctx.seed)
        log(
            f"Run {run_dir.name}: {backbone.name} ({ctx.mode}, weights {ctx.weights}, {ctx.image_size}px), "
            f"{len(ctx.train_records)} train / {len(ctx.val_records)} val images"
        )
        if ctx.mode == "frozen" and ctx.weights.kind == "none":
            log("Note: frozen features from random weights learn little; use --weights imagenet for real training.")
        fitted = STRATEGIES[strategy](ctx)
        metrics = validation_metrics(ctx.labels(ctx.val_records), fitted.p_val, classes=dataset.classes)
        train_seconds = time.perf_counter() - start
        metrics.update(
            {
                "train_seconds": round(train_seconds, 2),
                **{k: round(v, 2) for k, v in ctx.timings.items()},
                "epochs_run": {
                    phase: sum(1 for r in ctx.history if r["phase"] == phase)
                    for phase in dict.fromkeys(r["phase"] for r in ctx.history)
                },
                "features": {"computed": len(cache.computed), "reused": len(cache.reused)},
            }
        )
        auc = metrics["val_roc_auc"]
        f1 = "f1" if ctx.n_classes == 2 else "macro f1"
        log(
            f"Validation: accuracy {metrics['val_accuracy']:.4f}  {f1} {metrics['val_f1']:.4f}  "
            f"roc_auc {auc if auc is None else round(auc, 4)}  loss {metrics['val_loss']:.4f}  ({train_seconds:.1f}s)"
        )
        write_results(
            run_dir,
            classifier=fitted.classifier,
            metrics=metrics,
            history=ctx.history,
            classes=dataset.classes,
            log=log,
        )
        try:
            summarize_run(log.board, run_dir, metrics, config)
        except Exception as exc:  # TensorBoard is a convenience; never lose a trained model over it
            log(f"Could not write the TensorBoard summary: {type(exc).__name__}: {exc}")
    result = RunResult(run_dir.name, run_dir, backbone.name, metrics, config, round(train_seconds, 2))
    return result, fitted.classifier


def _check_images(records, per_class: int = 3) -> list[bytes]:
    """A few validation photos of each class: the export's self-check compares graph and model on them."""
    picked: list[bytes] = []
    for label in sorted({r.label for r in records}):
        picked += [r.path.read_bytes() for r in [r for r in records if r.label == label][:per_class]]
    return picked
