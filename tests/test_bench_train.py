"""`pizzactl bench train`: plain model.fit over images vs the cached-feature path, one report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pizzactl.bench.train import _pick, default_backbone
from pizzactl.cli import main


def records(n_per_class: int):
    return [SimpleNamespace(label=label, path=f"{label}/{i}.jpg") for label in (0, 1) for i in range(n_per_class)]


def test_limit_keeps_both_classes_interleaved():
    picked = _pick(records(10), 5)
    assert len(picked) == 5
    assert [r.label for r in picked] == [0, 1, 0, 1, 0]
    assert len({r.path for r in picked}) == 5


def test_no_limit_or_a_large_one_keeps_everything():
    assert len(_pick(records(3), None)) == 6
    assert len(_pick(records(3), 100)) == 6


def test_the_default_backbone_is_what_train_trains(tmp_path):
    from pizzactl.config import load_settings

    assert default_backbone(load_settings({}, cwd=tmp_path, environ={})) == "efficientnet_lite2"
    assert default_backbone(load_settings({"backbone": "small_cnn,efficientnet_lite0"}, cwd=tmp_path, environ={})) == (
        "small_cnn"
    )


def test_make_photos_keeps_the_originals_and_adds_recrops_in_the_class_proportions(tmp_path, shared_photos):
    from PIL import Image

    from pizzactl.bench.photos import make_photos
    from pizzactl.data.dataset import load_dataset

    source = tmp_path / "source"
    for name, per_class in (("pizza", 3), ("not_pizza", 6)):
        (source / name).mkdir(parents=True)
        for photo in shared_photos[name][:per_class]:
            (source / name / photo.name).symlink_to(photo)
    made = make_photos(source, tmp_path / "out", 27, seed=1)
    dataset = load_dataset(made)
    assert dataset.counts() == {"not_pizza": 18, "pizza": 9}
    links = [r.path for r in dataset.records if r.path.is_symlink()]
    assert len(links) == 9 and {p.name for p in links} == {p.name for p in source.rglob("*.jpg")}
    crops = sorted(r.path for r in dataset.records if not r.path.is_symlink())
    assert len(crops) == 18
    original = shared_photos["pizza"][0]
    crop = next(p for p in crops if p.name.startswith(original.stem))
    with Image.open(crop) as a, Image.open(original) as b:
        assert a.size == b.size and a.format == "JPEG"
        assert a.tobytes() != b.convert("RGB").tobytes()
    again = make_photos(source, tmp_path / "again", 27, seed=1)
    assert {p.name: p.read_bytes() for p in crops} == {
        p.name: p.read_bytes() for p in again.rglob("*.jpg") if not p.is_symlink()
    }  # the same seed, the same photos
    mtime = crop.stat().st_mtime_ns
    assert make_photos(source, tmp_path / "out", 27, seed=1) == made and crop.stat().st_mtime_ns == mtime  # reused


@pytest.mark.slow
def test_bench_train_scale_runs_train_per_size_and_reports_time_and_peak_memory(isolated, shared_photos, monkeypatch):
    from pizzactl.bench.train import bench_scaling
    from pizzactl.config import load_settings

    source = isolated / "source"
    for name in ("pizza", "not_pizza"):
        (source / name).mkdir(parents=True)
        for photo in shared_photos[name][:6]:
            (source / name / photo.name).symlink_to(photo)
    for key, value in {"PIZZACTL_EPOCHS": "1", "PIZZACTL_IMAGE_SIZE": "32", "PIZZACTL_FINE_TUNE_EPOCHS": "0"}.items():
        monkeypatch.setenv(key, value)  # the child `pizzactl train` reads the same settings
    settings = load_settings({"data_dir": str(source), "weights": "none"})
    res = bench_scaling(settings, [12, 24], backbone="mobilenet_v3_small", work=isolated / "work")
    assert [r["photos"] for r in res["rows"]] == [12, 24]
    for row in res["rows"]:
        assert row["wall_seconds"] > 0 and row["cpu_seconds"] > 0
        assert 200 < row["peak_rss_mb"] < 24_000  # a TensorFlow process: hundreds of MB at least
        assert row["feature_seconds"] is not None and row["head_seconds"] is not None
    assert res["rows"][0]["time_per_photo_ratio"] == 1.0
    assert not (isolated / "work" / "run-12").exists()  # the cold caches are removed


@pytest.mark.slow
def test_bench_train_json_reports_both_timings_and_their_ratios(isolated, shared_data, capsys):
    with pytest.raises(SystemExit) as code:
        main(
            [
                "bench",
                "train",
                "--data",
                str(shared_data),
                "--backbone",
                "mobilenet_v3_small",
                "--weights",
                "none",
                "--epochs",
                "2",
                "--limit",
                "20",
                "--json",
            ]
        )
    assert code.value.code in (None, 0)
    res = json.loads(capsys.readouterr().out)
    for key in (
        "plain_seconds",
        "cached_seconds",
        "forward_pass_seconds",
        "speedup",
        "backbone",
        "n_images",
        "epochs",
        "weights",
    ):
        assert key in res, key
    assert res["backbone"] == "mobilenet_v3_small" and res["weights"] == "none"
    assert res["n_images"] == 20 and res["epochs"] == 2
    assert 0 < res["forward_pass_seconds"] <= res["cached_seconds"]
    assert res["speedup"] == pytest.approx(res["plain_seconds"] / res["cached_seconds"], rel=0.02)
    assert set(res["goals"]) == {"speedup >= 10", "cached <= 1.3 x forward"}
