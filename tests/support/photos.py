"""Photos for tests: seeded synthetic JPEGs where real photos are not the point, links to the real ones.

Real photos (conftest's `shared_data`, `shared_photos`, `copy_photos`: ../shared/data) are what
accuracy, golden decoding, training, bench and evaluate tests need; a missing folder fails those
tests in CI (PIZZACTL_REQUIRE_TIERS=data). Tests of plumbing (CLI flags, request shapes, fetch,
gateway input validation) need only valid images of the right kind: the ones below are generated
by Pillow from a fixed seed, so every run and every machine sees the same bytes, and the tests
run in a fresh clone without ../shared/data.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

COLOURS = [(200, 60, 40), (40, 90, 200), (60, 170, 60), (230, 220, 60), (130, 40, 160)]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    """image in the format fmt (JPEG, PNG, WEBP...), as bytes."""
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def photo_like_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A JPEG of a camera photo's size and byte count (a gradient under noise, ~170 kB at 640x480):
    big enough that libjpeg's reduced-scale decoding (draft) really reduces it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 64], -1)
    pixels = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype("uint8")
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def make_classes(root: Path, names, per_class: int = 8, size: int = 40) -> Path:
    """One folder of generated JPEGs per class name, a colour per class (seeded: the same bytes every run)."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(COLOURS[k]) + rng.integers(-40, 40, (size, size + i, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / name / f"{k}_{i}.jpg", quality=90)
    return root


def link_photos(root: Path, shared_photos, per_class: int) -> Path:
    """A folder of symlinks to the first real photos of each class (the photos are never copied)."""
    for name, photos in shared_photos.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for photo in photos[:per_class]:
            (root / name / photo.name).symlink_to(photo)
    return root


@pytest.fixture(scope="session")
def synthetic_photos(tmp_path_factory) -> SimpleNamespace:
    """Seeded synthetic photos laid out like the shared ones: root/pizza, root/not_pizza, 6 JPEGs each.

    A namespace: root (the folder), photos ({class: sorted paths}, like `shared_photos`),
    jpeg (the bytes of the first pizza photo).
    """
    root = make_classes(tmp_path_factory.mktemp("synthetic_photos"), ["not_pizza", "pizza"], per_class=6, size=96)
    photos = {c: sorted((root / c).glob("*.jpg")) for c in ("pizza", "not_pizza")}
    return SimpleNamespace(root=root, photos=photos, jpeg=photos["pizza"][0].read_bytes())
