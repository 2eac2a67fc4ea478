"""What is in a dataset folder, before training on it: one pass over every file.

`scan(root)` reads each file once and returns one `ImageInfo` per file (size, mode,
format, EXIF/GPS, sha256, a 64-bit dHash, or why it is unreadable); `summarize(infos)`
turns that into the report dict; `report()` does both. A notebook can use `scan` for its
own plots. Near duplicates are pairs whose dHashes differ in at most `threshold` bits,
found with numpy popcount in row blocks (1.5k images: ~1M pairs, milliseconds).
"""

from __future__ import annotations

import hashlib
import io
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pizzactl.data.dataset import IMAGE_SUFFIXES, MIN_PER_CLASS, check_image
from pizzactl.data.download import resolve_data_dir
from pizzactl.errors import DataError
from pizzactl.hashing import tree_hash

NEAR_DUPLICATE_BITS = (
    4  # of 64: re-encoded or resized copies land at 0-2; at 6, dark vignetted photos of different dishes already match
)
_GPS_IFD = 0x8825
MAX_LISTED = 50


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    class_name: str
    bytes: int
    sha256: str
    ok: bool
    error: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    exif: bool = False
    gps: bool = False
    dhash: int | None = None  # 64-bit difference hash of the 9x8 grey thumbnail


def dhash(img, size: int = 8) -> int:
    """Difference hash: one bit per horizontally adjacent pixel pair of a (size+1) x size grey thumbnail."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def inspect_file(path: Path, class_name: str) -> ImageInfo:
    """Everything the report needs about one file; never raises for a bad image."""
    from PIL import Image, UnidentifiedImageError

    data = path.read_bytes()
    base: dict[str, Any] = dict(
        path=path, class_name=class_name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    reason = "not an image file name" if path.suffix.lower() not in IMAGE_SUFFIXES else check_image(data)
    if reason:
        return ImageInfo(ok=False, error=reason, **base)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height, mode, fmt = img.width, img.height, img.mode, img.format or ""
            exif = img.getexif()
            gps_ifd = exif.get_ifd(_GPS_IFD) if exif else {}
            has_gps = 2 in gps_ifd and 4 in gps_ifd  # GPSLatitude and GPSLongitude, not just a GPS block
            img.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, plenty for a 9x8 hash
            code = dhash(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return ImageInfo(ok=False, error=f"not a readable image ({type(exc).__name__}: {exc})", **base)
    return ImageInfo(
        ok=True, width=width, height=height, mode=mode, format=fmt, exif=bool(exif), gps=has_gps, dhash=code, **base
    )


def class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: Path | str) -> list[ImageInfo]:
    """One ImageInfo per (non-hidden) file under each class folder of `root`, in a stable order."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Dataset folder {root} does not exist.",
            hint="Pass a folder with one sub-folder per class, or run `pizzactl data download`.",
        )
    classes = class_folders(root)
    if not classes:
        raise DataError(
            f"{root} has no class sub-folders.", hint="Lay the data out as DIR/pizza/*.jpg and DIR/not_pizza/*.jpg."
        )
    files = [
        (path, name)
        for name in classes
        for path in sorted((root / name).rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    ]
    # Pillow's decoder and hashlib release the GIL: a few threads overlap I/O and decoding.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda item: inspect_file(*item), files))


def popcount64(x, builtin: bool = True):
    """Set bits per uint64 element: numpy>=2's bitwise_count, else a byte lookup table (numpy 1.26)."""
    import numpy as np

    if builtin and hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.int64)


def near_duplicate_pairs(
    hashes: Sequence[int], threshold: int = NEAR_DUPLICATE_BITS, block: int = 1024
) -> list[tuple[int, int, int]]:
    """Index pairs (i < j, distance) whose 64-bit hashes differ in at most `threshold` bits."""
    import numpy as np

    h = np.array([x & 0xFFFFFFFFFFFFFFFF for x in hashes], dtype=np.uint64)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(h), block):
        rows = h[start : start + block]
        dist = popcount64(rows[:, None] ^ h[None, :])
        i, j = np.nonzero(dist <= threshold)
        i = i + start
        keep = i < j
        pairs.extend(zip(i[keep].tolist(), j[keep].tolist(), dist[i[keep] - start, j[keep]].tolist(), strict=False))
    return pairs


def _groups(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (size >= 2) of an undirected graph, by union-find."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    comps: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        comps[find(i)].append(i)
    return sorted((c for c in comps.values() if len(c) > 1), key=lambda c: (-len(c), c))


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(infos: Sequence[ImageInfo], root: Path | str, threshold: int = NEAR_DUPLICATE_BITS) -> dict[str, Any]:
    """The report dict (JSON-ready) for the files `scan` found."""
    root = Path(root)
    rel = lambda p: Path(p).relative_to(root).as_posix()  # noqa: E731
    good = [i for i in infos if i.ok]
    classes = sorted({i.class_name for i in infos} | set(class_folders(root)))
    per_class = {
        c: {
            "images": sum(i.class_name == c for i in good),
            "unreadable": sum(i.class_name == c and not i.ok for i in infos),
        }
        for c in classes
    }

    by_sha: dict[str, list[ImageInfo]] = defaultdict(list)
    for i in good:
        by_sha[i.sha256].append(i)
    exact = [sorted(rel(i.path) for i in group) for group in by_sha.values() if len(group) > 1]
    exact.sort(key=lambda g: (-len(g), g))

    hashes = [i.dhash or 0 for i in good]
    pairs = [(a, b, d) for a, b, d in near_duplicate_pairs(hashes, threshold) if good[a].sha256 != good[b].sha256]
    near_groups = _groups(len(good), ((a, b) for a, b, _ in pairs))
    cross = [(a, b, d) for a, b, d in pairs if good[a].class_name != good[b].class_name]
    exact_cross = [g for g in by_sha.values() if len(g) > 1 and len({i.class_name for i in g}) > 1]

    sizes = Counter(f"{i.width}x{i.height}" for i in good)
    gps = [rel(i.path) for i in good if i.gps]
    return {
        "root": str(root),
        "files": len(infos),
        "images": len(good),
        "bytes": sum(i.bytes for i in infos),
        "classes": per_class,
        # what `train` and `data split` would refuse: fewer than MIN_PER_CLASS usable images
        "too_small_to_split": [c for c, v in per_class.items() if v["images"] < MIN_PER_CLASS],
        "width": _stats([i.width for i in good]),
        "height": _stats([i.height for i in good]),
        "sizes": [{"size": s, "count": n} for s, n in sizes.most_common(5)],
        "distinct_sizes": len(sizes),
        "modes": dict(Counter(i.mode for i in good).most_common()),
        "formats": dict(Counter(i.format for i in good).most_common()),
        "unreadable": [{"path": rel(i.path), "reason": i.error} for i in infos if not i.ok],
        "exact_duplicates": {
            "groups": len(exact),
            "redundant_files": sum(len(g) - 1 for g in exact),
            "cross_class_groups": len(exact_cross),
            "listed": exact[:MAX_LISTED],
        },
        "near_duplicates": {
            "threshold_bits": threshold,
            "pairs": len(pairs),
            "groups": len(near_groups),
            "cross_class_pairs": len(cross),
            "listed": [
                {"a": rel(good[a].path), "b": rel(good[b].path), "distance": d}
                for a, b, d in sorted(pairs, key=lambda p: (p[2], rel(good[p[0]].path)))[:MAX_LISTED]
            ],
        },
        "exif": {"with_exif": sum(i.exif for i in good), "with_gps": len(gps), "gps_files": gps[:MAX_LISTED]},
        "data_hash": tree_hash(root, ((i.path, bytes.fromhex(i.sha256)) for i in good)),  # = load_dataset's
    }


def report(settings=None, *, root: Path | str | None = None, threshold: int = NEAR_DUPLICATE_BITS) -> dict[str, Any]:
    """Scan and summarise a dataset folder: `root`, else settings' --data, else the downloaded dataset.

    The label check (`train.label_check`, TensorFlow and a forward pass over the photos) sits a
    layer up: `pizzactl data report --label-check` adds its answer under "label_check".
    """
    if root is None:
        if settings is None:
            raise DataError("No dataset folder given.", hint="Pass a folder: pizzactl data report DIR.")

        root = resolve_data_dir(settings)
    root = Path(root).expanduser()
    started = time.perf_counter()
    infos = scan(root)
    rep = summarize(infos, root, threshold)
    rep["seconds"] = round(time.perf_counter() - started, 2)
    return rep
