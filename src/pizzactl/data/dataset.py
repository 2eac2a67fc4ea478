"""A dataset folder (one sub-folder per class), read once, checked, hashed and split.

Labels are the sorted class folder names; for the pizza dataset that makes
`not_pizza` = 0 and `pizza` = 1, so a model's output is P(pizza). With two classes the
positive class is `classes[1]`; with more, the model answers a probability per class.

Everything a training run could trip over later is checked here, before it starts: fewer than
two class folders, a class without usable images, a class too small to split, a folder name
that cannot be a label.
"""

from __future__ import annotations

import io
import random
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pizzactl.errors import DataError
from pizzactl.hashing import sha256_bytes, tree_hash

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int
    class_name: str


@dataclass(frozen=True)
class Dataset:
    root: Path
    classes: tuple[str, ...]
    records: tuple[ImageRecord, ...]
    data_hash: str  # sha256 over (relative path, file sha256) of every usable image
    skipped: tuple[tuple[Path, str], ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, int]:
        return {c: sum(r.class_name == c for r in self.records) for c in self.classes}


def check_image(data: bytes) -> str | None:
    """Why these bytes are not a usable image, or None if they are.

    `verify()` catches files that are not images at all; decoding (at a reduced JPEG
    scale, so it stays cheap) catches truncated files, which `verify()` lets through
    for JPEG and which would otherwise fail later inside training.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (64, 64))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"not a readable image ({type(exc).__name__}: {exc})"
    return None


def load_dataset(root: Path | str, *, check: bool = True) -> Dataset:
    """List, check and hash a dataset folder. Unreadable files are skipped with a warning."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Dataset folder {root} does not exist.",
            hint="Pass --data DIR (one sub-folder per class), or run `pizzactl data download`.",
        )
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(classes) < 2:
        found = f" ({classes[0]})" if classes else ""
        raise DataError(
            f"{root} has {len(classes)} class folder(s){found}; a classifier needs at least two.",
            hint="Put one sub-folder per class in it, e.g. DIR/pizza/*.jpg and DIR/not_pizza/*.jpg.",
        )
    for name in classes:
        check_class_name(name, root)
    records: list[ImageRecord] = []
    skipped: list[tuple[Path, str]] = []
    hashed: list[tuple[Path, bytes]] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((path, "not an image file name"))
                continue
            data = path.read_bytes()
            reason = check_image(data) if check else None
            if reason:
                skipped.append((path, reason))
                continue
            records.append(ImageRecord(path=path, label=label, class_name=name))
            hashed.append((path, sha256_bytes(data)))
    for path, reason in skipped:
        warnings.warn(f"skipping {path}: {reason}", stacklevel=2)
    empty = [c for c in classes if not any(r.class_name == c for r in records)]
    if empty:
        raise DataError(
            f"No usable images for class(es) {', '.join(empty)} in {root}.",
            hint=f"Put JPEG or PNG photos in {root / empty[0]}, or remove the folder (every sub-folder is a class).",
        )
    return Dataset(
        root=root, classes=classes, records=tuple(records), data_hash=tree_hash(root, hashed), skipped=tuple(skipped)
    )


def check_class_name(name: str, root: Path) -> None:
    """A class name becomes the model's label (a UTF-8 string in the graph, JSON, CSV, metrics):
    spaces and any Unicode letter are fine; bytes that are not UTF-8 and control characters are not."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"The class folder name {name!r} in {root} is not valid UTF-8, so it cannot be a label.",
            hint="Rename the folder (labels are the folder names).",
        ) from None
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in name) or name != name.strip():
        raise DataError(
            f"The class folder name {name!r} in {root} has control characters or leading/trailing spaces.",
            hint="Rename the folder: labels are the folder names, as clients will see them.",
        )


MIN_PER_CLASS = 2  # one to train on, one to validate (or test) on


def stratified_folds(labels, k: int, seed: int) -> list[int]:
    """A fold number 0..k-1 for each label (in order): every class spread evenly, fixed by `seed`."""
    fold = [0] * len(labels)
    rng = random.Random(seed)
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        for j, i in enumerate(members):
            fold[i] = j % k
    return fold


def stratified_split(
    dataset: Dataset, val_fraction: float = 0.2, seed: int = 42
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Deterministic stratified split: the same seed and files give the same split anywhere."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_split must be between 0 and 1, got {val_fraction}.", hint="Use e.g. 0.2.")
    counts = dataset.counts()
    small = [c for c in dataset.classes if counts[c] < MIN_PER_CLASS]
    if small:
        raise DataError(
            f"Class {small[0]!r} has {counts[small[0]]} usable image(s): too few to split into training and "
            f"validation (at least {MIN_PER_CLASS} per class; a few dozen to learn anything).",
            hint=f"Add photos to {dataset.root / small[0]}, or remove the folder.",
        )
    rng = random.Random(seed)
    train: list[ImageRecord] = []
    val: list[ImageRecord] = []
    for label in range(len(dataset.classes)):
        group = sorted((r for r in dataset.records if r.label == label), key=lambda r: r.path.as_posix())
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * val_fraction)))
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val
