"""`pizzactl data split`: set a test set aside, DIR -> DEST/train and DEST/test, stratified, fixed by a seed.

`train` and `evaluate` then never share a photo: `pizzactl train --data DEST/train` splits
its own validation set out of `train`, and `pizzactl evaluate --data DEST/test` measures what
the model does on photos it never saw. Files are symlinked (absolute paths) unless `copy`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pizzactl.data.dataset import load_dataset, stratified_split
from pizzactl.errors import DataError
from pizzactl.files import atomic_dir


@dataclass(frozen=True)
class SplitResult:
    train_dir: Path
    test_dir: Path
    counts: dict  # {"train": {class: n}, "test": {class: n}}
    seed: int
    test_fraction: float
    data_hash: str  # of the source folder

    def as_dict(self) -> dict:
        return {
            "train_dir": str(self.train_dir),
            "test_dir": str(self.test_dir),
            "counts": self.counts,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "data_hash": self.data_hash,
        }


def split(
    source: Path | str, dest: Path | str, *, test_fraction: float = 0.15, seed: int = 0, copy: bool = False
) -> SplitResult:
    """Write DEST/train/<class>/* and DEST/test/<class>/*; DEST must not exist or be empty."""
    dataset = load_dataset(source)
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"{dest} already exists and is not empty.", hint="Pick another --dest, or delete it first.")
    train, test = stratified_split(dataset, test_fraction, seed)
    counts: dict = {}
    with atomic_dir(dest) as tmp:  # all or nothing: an interrupted split leaves no half-written DEST
        for part, records in (("train", train), ("test", test)):
            counts[part] = {c: 0 for c in dataset.classes}
            for r in records:
                target = tmp / part / r.class_name / r.path.relative_to(dataset.root / r.class_name)
                target.parent.mkdir(parents=True, exist_ok=True)
                if copy:
                    shutil.copy2(r.path, target)
                else:
                    target.symlink_to(r.path.resolve())
                counts[part][r.class_name] += 1
    return SplitResult(dest / "train", dest / "test", counts, seed, test_fraction, dataset.data_hash)
