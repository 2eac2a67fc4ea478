#!/usr/bin/env python3
"""Nested evaluation of `pizzactl train`: the accuracy to expect on photos no decision was made on.

Outer: the photos are cut into K stratified folds (default 5). An outer fold is touched by
nothing until it is scored. Inner: the other K-1 folds are split exactly as `pizzactl train`
splits its data (train / validation: `val_split`, `seed`); every candidate backbone is trained
on that inner split with pizzactl's own `train_one` (each backbone's default recipe), and
every decision below is made on the inner validation photos only:

* which backbone, or which average of several backbones' probabilities (an ensemble);
* which test-time views (plain; plain + mirror, what the exported model does; plus a centre
  zoom and its mirror);
* the threshold (0.5, or the one that maximises inner validation accuracy).

The decided recipe is then scored on the outer fold. The table gives the mean and spread over
outer folds of accuracy, precision and recall (pizza is the positive class), for the decided
recipe and, for information only (choosing among them by this table would be tuning on the
outer folds), for each fixed recipe. It also lists the photos that every candidate got wrong
when they were in the outer fold: label-noise suspects.

Every backbone's features are cached once for all photos (pizzactl's feature cache, keyed by
the whole dataset), so a fold costs the heads and the fine-tuning, not a pass over the photos.

usage:
  python benchmarks/protocol.py run DATA WORK [--folds 5] [--seed 0] [--backbones a,b,c]
  python benchmarks/protocol.py report WORK [--markdown]

`run` is resumable: each (fold, backbone) writes WORK/predictions/fold<k>-<backbone>.csv when
done and is skipped when that file exists. Runs one fold and backbone at a time, each in its
own process (TensorFlow's memory is returned between them).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VIEWS = ("plain", "flip", "zoom", "zoomflip")
TTA = {"plain": ("plain",), "flip": ("plain", "flip"), "flip+zoom": VIEWS}
ZOOM = 0.875  # the zoom view: the central 87.5% of the photo


def _settings(data: Path, work: Path, backbone: str):
    """`pizzactl train`'s settings (its defaults, or the PIZZACTL_* environment) for this backbone."""
    from pizzactl.config import load_settings

    environ = {**os.environ, "PIZZACTL_CACHE_DIR": str(work / "cache"), "PIZZACTL_RUNS_DIR": str(work / "runs")}
    return load_settings({"data_dir": str(data), "backbone": backbone}, environ=environ)


def fit(data: Path, work: Path, k: int, fold_index: int, backbone_name: str, seed: int) -> None:
    """Train one backbone on one outer fold's inner split; write its per-view predictions.

    `seed` draws the outer folds; the training itself uses `pizzactl train`'s own seed.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pizzactl.data.dataset import Dataset, load_dataset, stratified_folds, stratified_split
    from pizzactl.train import train_one
    from pizzactl.train.backbones import get_backbone
    from pizzactl.train.features import FeatureCache

    settings = _settings(data, work, backbone_name)
    dataset = load_dataset(data)
    fold = stratified_folds([r.label for r in dataset.records], k, seed)
    outer_train = tuple(r for r, f in zip(dataset.records, fold, strict=True) if f != fold_index)
    outer_test = [r for r, f in zip(dataset.records, fold, strict=True) if f == fold_index]
    inner = Dataset(dataset.root, dataset.classes, outer_train, dataset.data_hash)
    inner_train, inner_val = stratified_split(inner, settings.val_split, settings.seed)
    cache = FeatureCache(Path(settings.cache_dir) / "features")
    started = time.perf_counter()
    result, classifier = train_one(
        settings, get_backbone(backbone_name), dataset, inner_train, inner_val, cache=cache, show_progress=False
    )
    seconds = time.perf_counter() - started
    size = int(result.config["image_size"])
    rows = []
    for split, records in (("inner_val", inner_val), ("outer_test", outer_test)):
        probabilities = view_probabilities(classifier, [r.path for r in records], size)
        for i, r in enumerate(records):
            rows.append(
                {
                    "fold": fold_index,
                    "backbone": backbone_name,
                    "split": split,
                    "path": r.path.relative_to(dataset.root).as_posix(),
                    "label": r.label,
                    **{v: f"{probabilities[v][i]:.6f}" for v in VIEWS},
                }
            )
    out = work / "predictions" / f"fold{fold_index}-{backbone_name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
    timing = {"fold": fold_index, "backbone": backbone_name, "train_seconds": round(seconds, 1), **result.metrics}
    with open(work / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(timing, default=str) + "\n")


def view_probabilities(classifier, paths, size: int) -> dict:
    """P(positive) of the trained head and backbone for each test-time view of these photos.

    The views are decoded the way serving decodes (`decode_resize` of the file bytes); the zoom
    view resizes to size / 0.875 and keeps the centre.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from pizzactl.train.pixels import decode_images

    head = classifier.get_layer("head")
    extractor = next(layer for layer in classifier.layers if isinstance(layer, keras.Model) and layer is not head)
    forward = tf.function(lambda x: head(extractor(x, training=False), training=False))
    big = round(size / ZOOM)
    off = (big - size) // 2
    out: dict = {v: [] for v in VIEWS}
    for start in range(0, len(paths), 64):
        chunk = paths[start : start + 64]
        plain = decode_images(chunk, size)
        zoom = decode_images(chunk, big)[:, off : off + size, off : off + size]
        for view, x in (("plain", plain), ("flip", plain[:, :, ::-1]), ("zoom", zoom), ("zoomflip", zoom[:, :, ::-1])):
            out[view].append(forward(tf.constant(np.ascontiguousarray(x))).numpy().ravel())
    return {v: np.concatenate(ps) for v, ps in out.items()}


def run(args) -> None:
    data, work = Path(args.data).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "protocol.json").write_text(
        json.dumps({"data": str(data), "folds": args.folds, "seed": args.seed, "backbones": args.backbones}) + "\n"
    )
    for fold_index, backbone in itertools.product(range(args.folds), args.backbones.split(",")):
        if (work / "predictions" / f"fold{fold_index}-{backbone}.csv").exists():
            continue
        print(f"fold {fold_index}, {backbone}", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "fit", str(data), str(work), str(args.folds), str(fold_index), backbone]
        subprocess.run([*command, str(args.seed)], check=True)


# --- the report: decisions on inner validation, scores on outer folds ------------------------


def load_predictions(work: Path):
    """{(fold, split): {"labels": {path: label}, "p": {(backbone, view): {path: p}}}}"""
    table: dict = {}
    for path in sorted((work / "predictions").glob("fold*-*.csv")):
        with open(path) as fh:
            for row in csv.DictReader(fh):
                key = (int(row["fold"]), row["split"])
                entry = table.setdefault(key, {"labels": {}, "p": {}})
                entry["labels"][row["path"]] = int(row["label"])
                for view in VIEWS:
                    entry["p"].setdefault((row["backbone"], view), {})[row["path"]] = float(row[view])
    return table


def probabilities(entry, members, views):
    """Mean P(positive) over these backbones and views, in the entry's path order."""
    import numpy as np

    paths = sorted(entry["labels"])
    return paths, np.mean([[entry["p"][(b, v)][p] for p in paths] for b in members for v in views], axis=0)


def score(y, p, threshold: float) -> dict:
    from pizzactl.train.metrics import binary_metrics, log_loss

    m = binary_metrics(y, p, threshold)
    (tn, _), (_, tp) = m["confusion_matrix"]
    return {**m, "log_loss": log_loss(y, p), "wrong": m["n"] - tn - tp}


def table_row(name: str, scores: list) -> str:
    """One markdown row: accuracy mean ± sd (min-max) over folds, mean precision and recall, wrong of n."""
    import numpy as np

    acc = np.array([s["accuracy"] for s in scores])
    return (
        f"| {name} | {acc.mean():.4f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.4f} ({acc.min():.3f}-{acc.max():.3f}) "
        f"| {np.mean([s['precision'] for s in scores]):.4f} | {np.mean([s['recall'] for s in scores]):.4f} "
        f"| {sum(s['wrong'] for s in scores)} of {sum(s['n'] for s in scores)} |"
    )


def report(args) -> str:
    import numpy as np

    from pizzactl.train.metrics import best_threshold

    work = Path(args.work)
    setup = json.loads((work / "protocol.json").read_text())
    table = load_predictions(work)
    fold_ids = sorted({f for f, _ in table})
    every = [{b for b, _ in table[key]["p"]} for key in table]
    backbones = sorted(set.intersection(*every))  # a backbone missing from a fold cannot be scored on it
    partial = sorted(set.union(*every) - set(backbones))
    candidates = [c for n in range(1, len(backbones) + 1) for c in itertools.combinations(backbones, n)]
    recipes = [(c, t) for c in candidates for t in TTA]
    fixed: dict = {}
    decided: list = []
    wrong_everywhere: dict = {}
    for f in fold_ids:
        inner, outer = table[(f, "inner_val")], table[(f, "outer_test")]
        inner_scores = {}
        for members, tta in recipes:
            _, p_in = probabilities(inner, members, TTA[tta])
            y_in = np.array([inner["labels"][p] for p in sorted(inner["labels"])])
            inner_scores[(members, tta)] = score(y_in, p_in, 0.5)
            paths, p_out = probabilities(outer, members, TTA[tta])
            y_out = np.array([outer["labels"][p] for p in paths])
            fixed.setdefault((members, tta), []).append(score(y_out, p_out, 0.5))
            if tta == "flip" and len(members) == 1:
                for path, y, p in zip(paths, y_out, p_out, strict=True):
                    wrong_everywhere.setdefault(path, []).append(bool((p >= 0.5) != (y == 1)))
        # the decision: best inner accuracy, then lower inner log loss, then fewer backbones and views
        choice = min(
            recipes,
            key=lambda r: (-inner_scores[r]["accuracy"], inner_scores[r]["log_loss"], len(r[0]), len(TTA[r[1]])),
        )
        members, tta = choice
        paths_in, p_in = probabilities(inner, members, TTA[tta])
        threshold = best_threshold(np.array([inner["labels"][p] for p in paths_in]), p_in)
        paths, p_out = probabilities(outer, members, TTA[tta])
        y_out = np.array([outer["labels"][p] for p in paths])
        decided.append(
            {
                "fold": f,
                "recipe": choice,
                "threshold": threshold,
                "at_0.5": score(y_out, p_out, 0.5),
                "tuned": score(y_out, p_out, threshold),
            }
        )
    lines = [
        f"Nested protocol: {len(fold_ids)} outer folds (seed {setup['seed']}) over {sum(len(table[(f, 'outer_test')]['labels']) for f in fold_ids)} photos; "
        f"backbones {', '.join(backbones)}; decisions on each fold's inner validation split only."
        + (f" Left out (not run on every fold): {', '.join(partial)}." if partial else ""),
        "",
        "| recipe | outer accuracy, mean ± sd (min-max) | precision | recall | wrong |",
        "| --- | --- | --- | --- | --- |",
    ]

    lines.append(table_row("**decided on inner folds, threshold 0.5**", [d["at_0.5"] for d in decided]))
    lines.append(table_row("**decided on inner folds, threshold tuned on inner folds**", [d["tuned"] for d in decided]))
    for (members, tta), scores in sorted(fixed.items(), key=lambda kv: -np.mean([s["accuracy"] for s in kv[1]])):
        lines.append(table_row(f"fixed: {'+'.join(members)}, views {tta}", scores))
    lines += ["", "Decisions per outer fold (on its inner validation split):", ""]
    for d in decided:
        members, tta = d["recipe"]
        lines.append(
            f"- fold {d['fold']}: {'+'.join(members)}, views {tta}, tuned threshold {d['threshold']:.2f}: "
            f"outer accuracy {d['at_0.5']['accuracy']:.4f} at 0.5, {d['tuned']['accuracy']:.4f} tuned"
        )
    suspects = sorted(p for p, wrong in wrong_everywhere.items() if all(wrong) and len(wrong) == len(backbones))
    lines += ["", f"Photos every backbone got wrong in the outer fold (views plain+flip, 0.5): {len(suspects)}", ""]
    lines += [f"- {p}" for p in suspects]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train every backbone on every outer fold's inner split")
    r.add_argument("data")
    r.add_argument("work")
    r.add_argument("--folds", type=int, default=5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--backbones", default="efficientnet_lite2")  # pizzactl train's default
    f = sub.add_parser("fit", help=argparse.SUPPRESS)
    for name in ("data", "work", "folds", "fold", "backbone", "seed"):
        f.add_argument(name)
    p = sub.add_parser("report", help="decide on inner folds, score on outer folds, print the table")
    p.add_argument("work")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    elif args.command == "fit":
        fit(Path(args.data), Path(args.work), int(args.folds), int(args.fold), args.backbone, int(args.seed))
    else:
        sys.stdout.write(report(args))


if __name__ == "__main__":
    main()
