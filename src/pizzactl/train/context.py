"""What one backbone's training run needs, decided once before it starts (`plan`).

Strategies read a `TrainContext` instead of settings: the recipe's defaults and the user's
flags are already reconciled (`recipes.setting_or_recipe`), the weights resolved, the sizes
chosen. Its `history` and `timings` are the two things a strategy fills in as it goes.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pizzactl import __version__
from pizzactl.errors import UsageError
from pizzactl.train.backbones.weights import resolve_weights
from pizzactl.train.heads import targets
from pizzactl.train.metrics import THRESHOLD
from pizzactl.train.recipes import Recipe, model_and_crop_size, recipe_for, setting_or_recipe


@dataclass(frozen=True)
class TrainContext:
    backbone: Any  # backbones.Backbone
    recipe: Recipe
    weights: Any  # backbones.Weights
    image_size: int  # the model's input: what serving resizes to, what validation measures
    train_size: int  # what training (and the feature cache) sees; smaller with FixRes
    epochs: int
    fine_tune_epochs: int
    batch_size: int
    augment: bool
    seed: int
    dataset: Any  # data.dataset.Dataset
    train_records: tuple
    val_records: tuple
    cache: Any  # features.FeatureCache
    log: Any  # run_log.RunLog (or anything callable with a message and a `bar`)
    history: list[dict] = field(default_factory=list)  # one row per epoch -> history.csv
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds -> metrics.json

    @property
    def mode(self) -> str:
        """ "frozen": a pretrained backbone, frozen while heads train; "scratch": trained whole."""
        return "frozen" if self.backbone.pretrained else "scratch"

    @property
    def tune_from(self) -> str | None:
        """The backbone's cut for fine-tuning on cached maps, when this run fine-tunes."""
        return getattr(self.backbone, "tune_from", None) if self.fine_tune_epochs > 0 else None

    @property
    def augmented_views(self) -> int:
        """Cached augmented views per photo (the frozen path's data augmentation)."""
        return self.recipe.augmented_views if (self.augment and self.mode == "frozen") else 0

    @property
    def n_classes(self) -> int:
        return len(self.dataset.classes)

    @property
    def threshold(self) -> float | None:
        """The binary decision threshold; None with more than two classes (the label is the arg max)."""
        return THRESHOLD if self.n_classes == 2 else None

    def labels(self, records):
        """What the head trains on: float [N] P(classes[1]) for two classes, one-hot [N, K] for more."""

        return targets([r.label for r in records], self.n_classes)


def plan(settings, backbone, dataset, train_records, val_records, *, cache, log) -> TrainContext:
    """Reconcile `settings` (the user's flags win) with the backbone's recipe."""

    recipe = recipe_for(backbone)
    if settings.augmented_views is not None:  # the user's value wins over the recipe's
        if int(settings.augmented_views) < 0:
            raise UsageError(
                f"augmented_views must be 0 or more, not {settings.augmented_views}.",
                hint="Use --augmented-views 0 for the photo and its mirror only.",
            )
        recipe = replace(recipe, augmented_views=int(settings.augmented_views))
    image_size, train_size = model_and_crop_size(
        settings.image_size or recipe.image_size, backbone.input_size, recipe.test_size_factor, backbone.min_input_size
    )
    fine_tune_epochs = setting_or_recipe(settings, "fine_tune_epochs", recipe.fine_tune_epochs) or 0
    return TrainContext(
        backbone=backbone,
        recipe=recipe,
        weights=resolve_weights(settings.weights, backbone, explicit=settings.explicit("weights")),
        image_size=image_size,
        train_size=train_size,
        epochs=int(setting_or_recipe(settings, "epochs", recipe.epochs)),
        fine_tune_epochs=int(fine_tune_epochs) if backbone.pretrained else 0,
        batch_size=int(settings.batch_size),
        augment=bool(settings.augment),
        seed=int(settings.seed),
        dataset=dataset,
        train_records=tuple(train_records),
        val_records=tuple(val_records),
        cache=cache,
        log=log,
    )


def run_config(ctx: TrainContext, settings, run_id: str, strategy: str) -> dict[str, Any]:
    """config.json: what the run was asked to do and everything it decided from that."""
    return {
        "run_id": run_id,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "backbone": ctx.backbone.name,
        "mode": ctx.mode,
        "strategy": strategy,
        "weights": str(ctx.weights),
        "weights_id": ctx.weights.id,
        "image_size": ctx.image_size,
        "train_image_size": ctx.train_size,
        "epochs": ctx.epochs,
        "fine_tune_epochs": ctx.fine_tune_epochs,
        "fine_tune_from": ctx.tune_from,  # None: fine-tuning (if any) runs on images
        "batch_size": ctx.batch_size,
        "augment": ctx.augment,
        "augmented_views": ctx.augmented_views,
        "tta": ctx.recipe.tta,
        "seed": ctx.seed,
        "val_split": float(settings.val_split),
        "data_dir": str(ctx.dataset.root),
        "data_hash": ctx.dataset.data_hash,
        "classes": list(ctx.dataset.classes),
        "n_train": len(ctx.train_records),
        "n_val": len(ctx.val_records),
        "threshold": ctx.threshold,
        "recipe": asdict(ctx.recipe),
        "pizzactl_version": __version__,
        "settings": settings.as_dict(),
    }
