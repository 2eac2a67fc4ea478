"""Label-noise check: the photos that classifiers trained without them get wrong, every time.

Repeated stratified K-fold on the default backbone's cached features (the photo and its
mirror image): each repeat cuts the photos into K folds with another seed and trains the
training head (`train.heads.fit_head`) on K-1 of them; so each photo is judged `repeats`
times, by heads that never saw it. One that every such head puts in another class is a
suspect: a photo filed under the wrong class, or one that shows none of them. A photo wrong only
sometimes is just hard. `pizzactl data report --label-check` lists the suspects, most
confidently wrong first; fixing or removing them is the user's call.

The features are the ones `pizzactl train`'s cache holds for that backbone (a forward pass
over the photos the first time: the whole check took about 2 minutes for the shared 1571 on 2
shared cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pizzactl.data.dataset import stratified_folds
from pizzactl.tfimport import require_tensorflow
from pizzactl.train.backbones import get_backbone, resolve_weights
from pizzactl.train.features import FeatureCache
from pizzactl.train.heads import fit_head, head_probabilities, targets
from pizzactl.train.recipes import recipe_for

FOLDS = 5
REPEATS = 3


def label_check(settings, dataset, *, folds: int = FOLDS, repeats: int = REPEATS) -> dict[str, Any]:
    """Out-of-fold P(labelled class) for every photo, `repeats` times; the photos always wrong."""

    require_tensorflow()  # sets TensorFlow's log level before importing it
    import keras
    import numpy as np

    backbone = get_backbone(str(settings.backbone).split(",")[0].strip())
    weights = resolve_weights(settings.weights, backbone, explicit=settings.explicit("weights"))
    extractor = backbone.build(weights, backbone.input_size)
    cache = FeatureCache(Path(settings.cache_dir).expanduser() / "features")
    features = {
        view: np.asarray(
            cache.get(
                extractor=extractor,
                backbone=backbone.name,
                weights=weights.id,
                image_size=backbone.input_size,
                dataset=dataset,
                view=view,
            )
        )
        for view in ("plain", "flip")
    }
    y = np.array([r.label for r in dataset.records], np.int64)
    n_classes = max(2, len(dataset.classes))
    t = targets(y, n_classes)
    recipe = recipe_for(backbone)
    p_class = np.zeros((repeats, len(y)))
    wrong = np.zeros((repeats, len(y)), bool)
    for repeat in range(repeats):
        fold = np.array(stratified_folds(list(y), folds, seed=int(settings.seed) + repeat))
        for k in range(folds):
            held, rest = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
            # early stopping watches a fifth of the training folds, never the held-out one
            stop_on = rest[np.array(stratified_folds(list(y[rest]), 5, seed=repeat)) == 0]
            fit_on = np.setdiff1d(rest, stop_on)
            keras.utils.set_random_seed(int(settings.seed) + repeat * folds + k)
            head, _ = fit_head(
                np.concatenate([features["plain"][fit_on], features["flip"][fit_on]]),
                np.concatenate([t[fit_on], t[fit_on]]),
                features["plain"][stop_on],
                t[stop_on],
                epochs=int(settings.epochs),
                batch_size=int(settings.batch_size),
                lr=recipe.lr,
                dropout=recipe.dropout,
                patience=recipe.patience,
            )
            p = np.mean([head_probabilities(head, features[v][held]) for v in ("plain", "flip")], axis=0)
            if p.ndim == 1:  # two classes: P(classes[1])
                p = np.stack([1 - p, p], axis=1)
            p_class[repeat, held] = p[np.arange(len(held)), y[held]]
            wrong[repeat, held] = p.argmax(axis=1) != y[held]
    suspects = [
        {
            "path": dataset.records[i].path.relative_to(dataset.root).as_posix(),
            "class": dataset.records[i].class_name,
            "p_class": round(float(p_class[:, i].mean()), 4),
        }
        for i in np.flatnonzero(wrong.all(axis=0))
    ]
    suspects.sort(key=lambda s: s["p_class"])
    return {
        "backbone": backbone.name,
        "weights": str(weights),
        "folds": folds,
        "repeats": repeats,
        "out_of_fold_accuracy": round(float(1 - wrong.mean()), 4),
        "wrong_sometimes": int(wrong.any(axis=0).sum() - len(suspects)),
        "suspects": suspects,
    }
