"""Backbone features computed once per photo and view, cached on disk, read without loading them whole.

A frozen backbone gives every photo the same features at every epoch, so computing them
every epoch (what `model.fit` over images does) wastes nearly all of a training run. Here
each (backbone, weights, image size, dataset, view) is computed once and stored as
`cache_dir/features/<key>.npy` (with `<key>.json`: which photos, in which order).

Memory stays bounded however many photos there are: features are written batch by batch as
they are computed, and read back by rows (`FeatureFile.rows`, with `pread`, so the pages
stay in the OS page cache rather than in the process), so a training run holds a batch of
feature maps at a time, not the whole cache. `Rows` strings the training rows of several
views together as one virtual array for a streaming `tf.data` pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pizzactl.files import atomic_open, atomic_write
from pizzactl.train.views import AUGMENT_VERSION, image_dataset

CACHE_FORMAT = 2  # 1: .npz read whole


def feature_key(backbone: str, weights: str, image_size: int, data_hash: str, view: str) -> str:
    """Cache key: everything the features depend on. `weights` is a `Weights.id`."""
    view_id = f"{view}-v{AUGMENT_VERSION}" if view.startswith("aug") else view
    blob = json.dumps(
        {"backbone": backbone, "weights": weights, "image_size": int(image_size), "data": data_hash, "view": view_id},
        sort_keys=True,
    )
    return f"{backbone}-{image_size}-{view}-" + hashlib.sha256(blob.encode()).hexdigest()[:20]


# --- one cached array -----------------------------------------------------------------------


class FeatureFile:
    """A `.npy` array on disk, read by rows.

    Indexing with an integer array or a slice reads just those rows (`features[idx]`);
    `np.asarray(features)` reads it all. Reads use `os.pread`, so nothing stays mapped in the
    process: its resident memory is what it holds, not what it has read.
    """

    def __init__(self, path: Path | str):
        import numpy as np

        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"{self.path}: .npy format {version} is not supported")
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not cache files")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        expected = self.offset + self.row_bytes * self.shape[0]
        if self.path.stat().st_size != expected:
            raise ValueError(f"{self.path}: {self.path.stat().st_size} bytes, expected {expected} (truncated?)")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, start: int, stop: int):
        """Rows start..stop-1, one read."""
        import numpy as np

        start, stop = max(0, start), min(stop, len(self))
        n = max(0, stop - start)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, n * self.row_bytes, self.offset + start * self.row_bytes)
        finally:
            os.close(fd)
        return np.frombuffer(data, self.dtype).reshape((n, *self.shape[1:])).copy()

    def rows(self, indices):
        """The rows at `indices` (any order, repeats allowed), in that order.

        Runs of consecutive rows are read at once, so reading everything in order costs a few
        large reads and a shuffled batch one small read per row.
        """
        import numpy as np

        indices = np.asarray(indices, np.int64).ravel()
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        if not len(indices):
            return out
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"row index out of range for {len(self)} rows")
        order = np.argsort(indices, kind="stable")
        wanted = indices[order]
        breaks = np.flatnonzero(np.diff(wanted) > 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run, positions in zip(np.split(wanted, breaks), np.split(order, breaks), strict=True):
                first, last = int(run[0]), int(run[-1])
                data = os.pread(fd, (last - first + 1) * self.row_bytes, self.offset + first * self.row_bytes)
                block = np.frombuffer(data, self.dtype).reshape((last - first + 1, *self.shape[1:]))
                out[positions] = block[run - first]
        finally:
            os.close(fd)
        return out

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self.read(start, stop) if step == 1 else self.rows(range(start, stop, step))
        if isinstance(key, int):
            return self.read(key, key + 1)[0]
        return self.rows(key)

    def __array__(self, dtype=None, copy=None):
        data = self.read(0, len(self))
        return data if dtype is None else data.astype(dtype)


def write_features(path: Path, n: int, batches: Iterator) -> FeatureFile:
    """Write `n` rows, arriving in `batches` of arrays, as a .npy file atomically; returns it.

    Only one batch is in memory at a time: the header is written once the first batch tells
    the row shape, then each batch is appended.
    """
    import numpy as np

    written = 0
    with atomic_open(path, "wb") as fh:
        for batch in batches:
            batch = np.ascontiguousarray(batch)
            if written == 0:
                header = {
                    "descr": np.lib.format.dtype_to_descr(batch.dtype),
                    "fortran_order": False,
                    "shape": (n, *batch.shape[1:]),
                }
                np.lib.format.write_array_header_1_0(fh, header)
            fh.write(batch.tobytes())
            written += len(batch)
        if written == 0:  # no rows: an empty array of unknown row shape
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (0, 0)})
        if written != n:
            raise ValueError(f"expected {n} rows, got {written}")
    return FeatureFile(path)


# --- several cached arrays as one ------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """Chosen rows of several arrays (cached views, or arrays in memory) as one virtual array.

    Row i of the whole is row `indices[i - start]` of the part it falls in, parts in order:
    the concatenation `np.concatenate([a[idx] for a, idx in parts])`, never built.
    """

    parts: tuple  # ((FeatureFile | numpy array, row indices), ...)

    @classmethod
    def of(cls, array) -> Rows:
        import numpy as np

        return cls(((array, np.arange(len(array))),))

    def __len__(self) -> int:
        return sum(len(idx) for _, idx in self.parts)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.parts[0][0].shape[1:])

    @property
    def dtype(self):
        return self.parts[0][0].dtype

    def take(self, positions):
        """The rows at these positions of the whole, in that order."""
        import numpy as np

        positions = np.asarray(positions, np.int64)
        ends = np.cumsum([len(idx) for _, idx in self.parts])
        part_of = np.searchsorted(ends, positions, side="right")
        out = np.empty((len(positions), *self.row_shape), self.dtype)
        for p, (array, idx) in enumerate(self.parts):
            mine = np.flatnonzero(part_of == p)
            if len(mine):
                local = positions[mine] - (ends[p] - len(idx))
                out[mine] = array[idx[local]]
        return out

    def chunks(self, size: int = 256) -> Iterator:
        """Every row, in order, `size` at a time."""
        for start in range(0, len(self), size):
            yield self.take(range(start, min(start + size, len(self))))


# --- the cache ------------------------------------------------------------------------------


@dataclass
class FeatureCache:
    """Features on disk under `root`; counts what it computed and what it reused."""

    root: Path
    computed: list[str] = field(default_factory=list)  # keys computed by this instance
    reused: list[str] = field(default_factory=list)  # keys loaded from disk
    compute_seconds: float = 0.0

    def path(self, key: str) -> Path:
        return Path(self.root) / f"{key}.npy"

    def _meta_path(self, key: str) -> Path:
        return Path(self.root) / f"{key}.json"

    @staticmethod
    def _paths_digest(relpaths: Sequence[str]) -> str:
        return hashlib.sha256("\n".join(relpaths).encode()).hexdigest()

    def load(self, key: str, relpaths: Sequence[str]) -> FeatureFile | None:
        """The cached array for these photos (in this order), or None if absent or not theirs."""
        try:
            meta = json.loads(self._meta_path(key).read_text())
            if meta.get("format") != CACHE_FORMAT or meta.get("paths") != self._paths_digest(relpaths):
                return None
            features = FeatureFile(self.path(key))
        except (OSError, ValueError):
            return None  # missing, truncated or foreign file: compute again
        return features if len(features) == len(relpaths) else None

    def get(
        self,
        *,
        extractor,
        backbone: str,
        weights: str,
        image_size: int,
        dataset,
        view: str,
        batch_size: int = 64,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
        dtype: str = "float32",
    ) -> FeatureFile:
        """Features [N, ...] of every record of `dataset` (in its order) for one view.

        `backbone` names what `extractor` computes (a backbone, or a backbone cut at a layer);
        `dtype` float16 halves the disk and the reads of feature maps.
        """
        relpaths = [r.path.relative_to(dataset.root).as_posix() for r in dataset.records]
        key = feature_key(backbone, weights, image_size, dataset.data_hash, view)
        cached = self.load(key, relpaths)
        if cached is not None:
            self.reused.append(key)
            return cached
        start = time.perf_counter()
        batches = feature_batches(
            extractor,
            [r.path for r in dataset.records],
            image_size,
            view=view,
            batch_size=batch_size,
            advance=progress(f"features {backbone} {view}", len(relpaths)) if progress else None,
            dtype=dtype,
        )
        features = write_features(self.path(key), len(relpaths), batches)
        meta = {"format": CACHE_FORMAT, "paths": self._paths_digest(relpaths), "n": len(relpaths), "view": view}
        atomic_write(self._meta_path(key), json.dumps(meta) + "\n")
        (Path(self.root) / f"{key}.npz").unlink(missing_ok=True)  # the same features in format 1
        self.compute_seconds += time.perf_counter() - start
        self.computed.append(key)
        return features


# --- computing features ---------------------------------------------------------------------

_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forward(model, size: int):
    """One compiled inference function per model (traced once, whatever the view or batch)."""
    import tensorflow as tf

    fn = _FORWARD.get(model)
    if fn is None:
        fn = tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)]
        )
        _FORWARD[model] = fn
    return fn


def feature_batches(
    model, paths: Sequence[Path], size: int, *, view: str = "plain", batch_size: int = 64, advance=None, dtype="float32"
) -> Iterator:
    """The frozen feature extractor over a view of these images, one batch of features at a time."""
    forward = _forward(model, size)
    for batch in image_dataset(paths, size, batch_size, view):
        yield forward(batch).numpy().astype(dtype)
        if advance:
            advance(int(batch.shape[0]))


def compute_features(
    model,
    paths: Sequence[Path],
    size: int,
    *,
    view: str = "plain",
    batch_size: int = 64,
    advance=None,
    dtype: str = "float32",
):
    """The frozen feature extractor over a view of these images, as one array in memory."""
    import numpy as np

    chunks = list(feature_batches(model, paths, size, view=view, batch_size=batch_size, advance=advance, dtype=dtype))
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 0), dtype)
