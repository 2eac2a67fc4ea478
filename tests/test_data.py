"""The dataset folder: bad files are skipped with a warning, the split is deterministic and stratified,
the content hash follows the bytes."""

from __future__ import annotations

import io
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from pizzactl.data.dataset import check_image, load_dataset, stratified_split
from pizzactl.errors import DataError

from support.cli import invoke


def jpeg(seed: int, size=(40, 32)) -> bytes:
    from PIL import Image

    img = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    img.putpixel((seed % size[0], seed % size[1]), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def make_dataset(root: Path, counts: dict[str, int]) -> Path:
    seed = 0
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            (root / cls / f"{cls}_{i:03d}.jpg").write_bytes(jpeg(seed))
    return root


def big_jpeg() -> bytes:
    """A noisy 200 px JPEG: most of its bytes are scan data, so cutting it keeps a valid header."""
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds", {"not_pizza": 30, "pizza": 20})


@pytest.fixture(scope="session")
def shared_dataset(shared_data):
    return load_dataset(shared_data)


# --- bad files ---------------------------------------------------------------------------


def test_corrupt_and_non_image_files_are_skipped_with_a_warning(tiny):
    good = big_jpeg()
    (tiny / "pizza" / "truncated.jpg").write_bytes(good[: len(good) * 2 // 3])
    (tiny / "pizza" / "text.jpg").write_text("this is not a jpeg\n")
    (tiny / "not_pizza" / "empty.jpg").write_bytes(b"")
    (tiny / "not_pizza" / "notes.txt").write_text("labelled by hand")

    with pytest.warns(UserWarning, match="skipping") as caught:
        ds = load_dataset(tiny)

    assert len(ds) == 50
    skipped = {p.name: why for p, why in ds.skipped}
    assert set(skipped) == {"truncated.jpg", "text.jpg", "empty.jpg", "notes.txt"}
    assert "empty" in skipped["empty.jpg"] and "not an image file name" in skipped["notes.txt"]
    assert all(r.path.name not in skipped for r in ds.records)
    assert len(caught) == 4


def test_check_image_accepts_png_and_grey_and_rejects_truncation():
    from PIL import Image

    png, grey = io.BytesIO(), io.BytesIO()
    Image.new("RGBA", (20, 20)).save(png, "PNG")
    Image.new("L", (20, 20)).save(grey, "JPEG")
    assert check_image(png.getvalue()) is None
    assert check_image(grey.getvalue()) is None
    data = big_jpeg()
    with Image.open(io.BytesIO(data[: len(data) * 2 // 3])) as img:
        img.verify()  # Image.verify() alone lets a truncated JPEG through...
    assert check_image(data) is None
    assert "truncated" in check_image(data[: len(data) * 2 // 3])  # ...decoding does not


def test_labels_are_sorted_class_names(tiny):
    ds = load_dataset(tiny)
    assert ds.classes == ("not_pizza", "pizza")
    assert {r.class_name: r.label for r in ds.records} == {"not_pizza": 0, "pizza": 1}
    assert ds.counts() == {"not_pizza": 30, "pizza": 20}


def test_missing_folder_single_class_and_empty_class_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset(tmp_path / "nope")
    assert "--data" in info.value.hint
    make_dataset(tmp_path / "one", {"pizza": 2})
    with pytest.raises(DataError, match="at least two"):
        load_dataset(tmp_path / "one")
    make_dataset(tmp_path / "two", {"pizza": 2})
    (tmp_path / "two" / "not_pizza").mkdir()
    (tmp_path / "two" / "not_pizza" / "broken.jpg").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="No usable images for class"):
            load_dataset(tmp_path / "two")


# --- split -------------------------------------------------------------------------------


def test_split_is_deterministic_for_a_seed(tiny):
    ds = load_dataset(tiny)
    assert stratified_split(ds, 0.2, seed=1) == stratified_split(ds, 0.2, seed=1)
    # and independent of the order the records arrive in
    shuffled = type(ds)(ds.root, ds.classes, tuple(reversed(ds.records)), ds.data_hash)
    assert stratified_split(shuffled, 0.2, seed=1) == stratified_split(ds, 0.2, seed=1)


def test_split_is_disjoint_complete_and_stratified(tiny):
    ds = load_dataset(tiny)
    train, val = stratified_split(ds, 0.2, seed=3)
    assert not {r.path for r in train} & {r.path for r in val}
    assert {r.path for r in train} | {r.path for r in val} == {r.path for r in ds.records}
    assert Counter(r.class_name for r in val) == {"not_pizza": 6, "pizza": 4}


def test_different_seeds_give_different_splits(tiny):
    ds = load_dataset(tiny)
    assert {r.path for r in stratified_split(ds, 0.2, seed=1)[1]} != {
        r.path for r in stratified_split(ds, 0.2, seed=2)[1]
    }


def test_bad_val_fraction_is_a_data_error(tiny):
    with pytest.raises(DataError, match="between 0 and 1"):
        stratified_split(load_dataset(tiny), 1.0)


def test_shared_photos_split_keeps_the_class_balance(shared_dataset):
    train, val = stratified_split(shared_dataset, 0.2, seed=42)
    counts = shared_dataset.counts()
    assert sum(counts.values()) == len(train) + len(val)
    for cls, n in counts.items():
        assert sum(r.class_name == cls for r in val) == round(n * 0.2)


# --- content hash ------------------------------------------------------------------------------


def test_data_hash_is_stable_and_changes_with_any_file(tiny, tmp_path):
    before = load_dataset(tiny).data_hash
    assert load_dataset(tiny).data_hash == before

    copy = shutil.copytree(tiny, tmp_path / "elsewhere")
    assert load_dataset(copy).data_hash == before  # content-addressed: the location does not matter

    (tiny / "pizza" / "pizza_000.jpg").write_bytes(jpeg(999))
    changed = load_dataset(tiny).data_hash
    assert changed != before

    (tiny / "pizza" / "pizza_000.jpg").rename(tiny / "pizza" / "renamed.jpg")
    assert load_dataset(tiny).data_hash not in (before, changed)


def test_skipped_files_do_not_change_the_hash(tiny):
    before = load_dataset(tiny).data_hash
    (tiny / "pizza" / "junk.jpg").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_dataset(tiny).data_hash == before


# --- `pizzactl data split`: a test set set aside ------------------------------------------


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_split_writes_disjoint_stratified_train_and_test_of_symlinks(tmp_path):
    from pizzactl.data.split import split

    src = make_dataset(tmp_path / "src", {"pizza": 20, "not_pizza": 40})
    result = split(src, tmp_path / "out", test_fraction=0.25, seed=3)
    train, test = _files(result.train_dir), _files(result.test_dir)
    assert not train & test and train | test == _files(src)
    assert result.counts == {"train": {"not_pizza": 30, "pizza": 15}, "test": {"not_pizza": 10, "pizza": 5}}
    link = next(result.test_dir.rglob("*.jpg"))
    assert link.is_symlink() and link.resolve().parent.parent == src.resolve()
    # what `train`/`evaluate` read back: the same classes, the held-out files only
    assert load_dataset(result.test_dir).counts() == {"not_pizza": 10, "pizza": 5}
    # the same seed gives the same split elsewhere; another seed another one
    again = split(src, tmp_path / "again", test_fraction=0.25, seed=3)
    assert _files(again.test_dir) == test
    other = split(src, tmp_path / "other", test_fraction=0.25, seed=4)
    assert _files(other.test_dir) != test


def test_split_copy_writes_real_files_and_refuses_a_non_empty_dest(tmp_path):
    from pizzactl.data.split import split

    src = make_dataset(tmp_path / "src", {"pizza": 4, "not_pizza": 4})
    result = split(src, tmp_path / "out", test_fraction=0.25, seed=0, copy=True)
    copied = next(result.train_dir.rglob("*.jpg"))
    assert not copied.is_symlink() and copied.read_bytes() == (src / copied.parent.name / copied.name).read_bytes()
    with pytest.raises(DataError) as info:
        split(src, tmp_path / "out", seed=0)
    assert "--dest" in info.value.hint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_cli_data_split_json_and_exit_code(tmp_path):
    import json

    src = make_dataset(tmp_path / "src", {"pizza": 6, "not_pizza": 6})

    def run(*a):
        return invoke("data", "split", *a)

    proc = run(str(src), "--dest", str(tmp_path / "out"), "--test", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["counts"]["test"] == {"not_pizza": 3, "pizza": 3} and body["seed"] == 0
    assert Path(body["test_dir"]) == tmp_path / "out" / "test"
    again = run(str(src), "--dest", str(tmp_path / "out"))
    assert again.returncode == 3 and "already exists" in again.stderr
