"""`pizzactl train`: split, feature cache, head training, run directories, export, --json.

Fast tests cover the pure parts (cache keys, weights ids, metrics, errors). Tests marked slow
train real (tiny) models on a few dozen of the shared photos: small_cnn from scratch, and the
frozen-feature path with mobilenet_v3_small (random weights, 64 px), twice on one cache.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from pizzactl.cli import main
from pizzactl.config import load_settings
from pizzactl.data.dataset import load_dataset, stratified_split
from pizzactl.errors import DataError, UsageError, WeightsError
from pizzactl.train.backbones.weights import weights_id
from pizzactl.train.features import feature_key

from support.cli import run_pizzactl
from support.photos import link_photos

RUN_FILES = {
    "config.json",
    "metrics.json",
    "history.csv",
    "training_curves.png",
    "confusion_matrix.png",
    "train.log",
    "model.keras",
    "tensorboard",
}


def make_images(root: Path, per_class: int = 6, size: int = 40) -> Path:
    """A tiny dataset of generated JPEGs: reddish 'pizza', bluish 'not_pizza'."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, colour in (("pizza", (200, 80, 40)), ("not_pizza", (40, 90, 200))):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(colour) + rng.integers(-40, 40, (size, size + i, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / label / f"{label}_{i}.jpg", quality=90)
    return root


def env_for(root: Path) -> dict[str, str]:
    return {f"PIZZACTL_{name.upper()}_DIR": str(root / name) for name in ("models", "runs", "cache", "state")}


def train_tiny(tmp_path: Path, shared_photos, backbone: str, **flags):
    """`train` at 64 px with random weights on 8 shared photos per class, one head epoch."""
    from pizzactl.train import train

    data = link_photos(tmp_path / "data", shared_photos, per_class=8)
    flags = {"data_dir": str(data), "backbone": backbone, "weights": "none", "image_size": 64, "epochs": 1, **flags}
    return train(load_settings(flags, cwd=tmp_path, environ=env_for(tmp_path)), show_progress=False)


class _Log(list):
    """A RunLog stand-in that keeps the messages."""

    def __call__(self, message):
        self.append(message)

    def bar(self, *a):
        return lambda n=1: None


# --- fast: pure parts --------------------------------------------------------------------


def test_split_is_deterministic_stratified_and_disjoint(tmp_path):
    dataset = load_dataset(make_images(tmp_path / "data", per_class=10))
    train_a, val_a = stratified_split(dataset, 0.2, seed=7)
    _train_b, val_b = stratified_split(dataset, 0.2, seed=7)
    assert [r.path for r in val_a] == [r.path for r in val_b]
    assert not {r.path for r in train_a} & {r.path for r in val_a}
    assert len(train_a) + len(val_a) == len(dataset)
    assert sorted(r.class_name for r in val_a) == ["not_pizza", "not_pizza", "pizza", "pizza"]
    _, val_other = stratified_split(dataset, 0.2, seed=8)
    assert {r.path for r in val_other} != {r.path for r in val_a}


def test_feature_key_changes_with_every_input_it_depends_on():
    base = dict(backbone="mobilenet_v3_small", weights="imagenet", image_size=224, data_hash="abc", view="plain")
    key = feature_key(**base)
    assert feature_key(**base) == key
    for field, other in (
        ("backbone", "efficientnet_lite0"),
        ("weights", "none"),
        ("image_size", 192),
        ("data_hash", "abd"),
        ("view", "aug1"),
    ):
        assert feature_key(**{**base, field: other}) != key, field
    assert feature_key(**{**base, "view": "aug1"}) != feature_key(**{**base, "view": "aug2"})


def test_weights_id_identifies_a_weights_file_by_its_content(tmp_path):
    a, b = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert weights_id("imagenet") == "imagenet"
    assert weights_id("none") == weights_id(None) == "none"
    assert weights_id(str(a)).startswith("file:")
    assert weights_id(str(a)) != weights_id(str(b))
    b.write_bytes(b"one")
    assert weights_id(str(a)) == weights_id(str(b))
    with pytest.raises(WeightsError):
        weights_id(str(tmp_path / "missing.h5"))


def test_train_without_data_says_to_pass_data(isolated):
    from pizzactl.train import train

    with pytest.raises(DataError) as info:
        train(load_settings({"data_dir": str(isolated / "nowhere")}))
    assert "--data" in info.value.hint


def test_train_rejects_unknown_backbone_and_imagenet_for_small_cnn(isolated):
    from pizzactl.train import train

    data = make_images(isolated / "data", per_class=2)
    with pytest.raises(UsageError) as info:
        train(load_settings({"data_dir": str(data), "backbone": "resnet9000"}))
    assert "small_cnn" in info.value.hint
    with pytest.raises(UsageError) as info:
        train(load_settings({"data_dir": str(data), "backbone": "small_cnn", "weights": "imagenet"}))
    assert "--weights none" in info.value.hint


def test_small_cnn_uses_random_weights_when_weights_were_not_chosen(tmp_path):
    from pizzactl.train.backbones import get_backbone, resolve_weights

    default = load_settings({}, cwd=tmp_path, environ={}).weights
    assert resolve_weights(default, get_backbone("small_cnn"), explicit=False).kind == "none"
    assert resolve_weights(default, get_backbone("mobilenet_v3_small"), explicit=False).kind == "imagenet"


def test_augmented_views_are_repeatable_and_distinct(tmp_path):
    import numpy as np
    import tensorflow as tf

    from pizzactl.model.decode import decode_resize
    from pizzactl.train.views import view_fn

    data = (make_images(tmp_path, per_class=1, size=64) / "pizza" / "pizza_0.jpg").read_bytes()
    plain = view_fn("plain", 32)(tf.constant(data), 0).numpy()
    assert np.array_equal(plain, decode_resize(tf.constant(data), 32).numpy())
    assert np.array_equal(view_fn("flip", 32)(tf.constant(data), 0).numpy(), plain[:, ::-1])
    aug1 = view_fn("aug1", 32)(tf.constant(data), 3).numpy()
    assert aug1.shape == (32, 32, 3) and aug1.min() >= 0 and aug1.max() <= 255
    assert np.array_equal(aug1, view_fn("aug1", 32)(tf.constant(data), 3).numpy())
    assert not np.array_equal(aug1, view_fn("aug2", 32)(tf.constant(data), 3).numpy())
    assert not np.array_equal(aug1, view_fn("aug1", 32)(tf.constant(data), 4).numpy())


def test_feature_file_reads_rows_in_any_order_without_loading_the_whole_file(tmp_path):
    import numpy as np

    from pizzactl.train.features import write_features

    data = np.arange(7 * 2 * 3, dtype=np.float16).reshape(7, 2, 3)
    ff = write_features(tmp_path / "x.npy", 7, iter([data[:3], data[3:5], data[5:]]))
    assert ff.shape == (7, 2, 3) and ff.dtype == np.float16 and len(ff) == 7
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), data)  # a plain .npy file
    for idx in ([6, 0, 3], [2, 2, 1], [5], []):
        np.testing.assert_array_equal(ff[np.array(idx, int)], data[idx])
    np.testing.assert_array_equal(ff[2:5], data[2:5])
    np.testing.assert_array_equal(np.asarray(ff), data)
    with pytest.raises(IndexError):
        ff[np.array([7])]
    with pytest.raises(ValueError):
        write_features(tmp_path / "short.npy", 8, iter([data]))  # fewer rows than announced
    assert not list(tmp_path.glob("*short*"))  # and nothing half-written is left


def test_rows_strings_chosen_rows_of_several_arrays_together(tmp_path):
    import numpy as np

    from pizzactl.train.features import Rows, write_features

    a = np.arange(10, dtype=np.float32).reshape(5, 2)
    b = write_features(tmp_path / "b.npy", 4, iter([100 + np.arange(8, dtype=np.float32).reshape(4, 2)]))
    rows = Rows(((a, np.array([4, 0])), (b, np.array([1, 3, 1]))))
    whole = np.concatenate([a[[4, 0]], np.asarray(b)[[1, 3, 1]]])
    assert len(rows) == 5 and rows.row_shape == (2,)
    np.testing.assert_array_equal(rows.take([4, 0, 2]), whole[[4, 0, 2]])
    np.testing.assert_array_equal(np.concatenate(list(rows.chunks(2))), whole)


def test_a_truncated_cache_file_is_computed_again(tmp_path):
    import numpy as np

    from pizzactl.train.features import FeatureCache, write_features

    cache = FeatureCache(tmp_path)
    write_features(cache.path("k"), 3, iter([np.zeros((3, 4), np.float32)]))
    (tmp_path / "k.json").write_text(json.dumps({"format": 2, "paths": cache._paths_digest(["a", "b", "c"])}))
    assert cache.load("k", ["a", "b", "c"]) is not None
    assert cache.load("k", ["a", "c", "b"]) is None  # other photos (or order): not theirs
    with open(cache.path("k"), "r+b") as fh:
        fh.truncate(cache.path("k").stat().st_size - 1)
    assert cache.load("k", ["a", "b", "c"]) is None


# --- slow: real (tiny) models ----------------------------------------------------------------


@pytest.mark.slow
def test_feature_cache_computes_each_view_once(tmp_path):
    import keras
    import numpy as np

    from pizzactl.train.features import FeatureCache

    dataset = load_dataset(make_images(tmp_path / "data", per_class=3))
    pixels = keras.Input((16, 16, 3))
    extractor = keras.Model(pixels, keras.layers.GlobalAveragePooling2D()(pixels))
    kwargs = dict(extractor=extractor, backbone="gap", weights="none", image_size=16, dataset=dataset, view="plain")

    first = FeatureCache(tmp_path / "features")
    features = first.get(**kwargs)
    assert features.shape == (6, 3) and len(first.computed) == 1
    (path,) = (tmp_path / "features").glob("*.npy")
    mtime = path.stat().st_mtime_ns

    second = FeatureCache(tmp_path / "features")
    again = second.get(**kwargs)
    assert second.computed == [] and second.reused == first.computed
    assert path.stat().st_mtime_ns == mtime
    assert np.array_equal(features, again)

    second.get(**{**kwargs, "view": "flip"})  # another view is another entry
    assert len(second.computed) == 1 and len(list((tmp_path / "features").glob("*.npy"))) == 2


@pytest.mark.slow
def test_early_stopping_restores_the_best_epoch():
    import keras
    import numpy as np

    from pizzactl.train.heads import fit_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    x_val = rng.normal(size=(64, 8)).astype("float32")
    y_val = (x_val[:, 0] <= 0).astype("float32")  # the opposite rule: learning the train set hurts

    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs["val_loss"])

    keras.utils.set_random_seed(0)
    head, _stop = fit_head(
        x, y, x_val, y_val, epochs=30, batch_size=32, lr=0.05, dropout=0.0, patience=3, callbacks=[Record()]
    )
    assert len(seen) < 30  # it stopped early
    assert seen[-1] > min(seen)
    p = np.clip(head.predict(x_val, verbose=0).ravel(), 1e-7, 1 - 1e-7)
    restored = float(-np.mean(y_val * np.log(p) + (1 - y_val) * np.log(1 - p)))
    assert restored == pytest.approx(min(seen), rel=1e-4)


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory, shared_photos):
    """`pizzactl train --json` with small_cnn from scratch, 32 px, 2 epochs, on 32 shared photos."""
    root = tmp_path_factory.mktemp("scratch")
    data = link_photos(root / "data", shared_photos, per_class=16)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env_for(root).items():
            mp.setenv(key, value)
        mp.chdir(root)
        capture = root / "stdout.json"
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                main(
                    [
                        "train",
                        "--data",
                        str(data),
                        "--backbone",
                        "small_cnn",
                        "--weights",
                        "none",
                        "--image-size",
                        "32",
                        "--epochs",
                        "2",
                        "--seed",
                        "3",
                        "--json",
                    ]
                )
            except SystemExit as exc:
                assert exc.code in (None, 0)
        capture.write_text(buf.getvalue())
    return root, json.loads(buf.getvalue())


@pytest.mark.slow
def test_train_json_reports_the_run_and_the_exported_model(scratch_run):
    root, result = scratch_run
    for key in ("run_dir", "model_dir", "backbone", "val_accuracy", "train_seconds", "leaderboard", "metrics"):
        assert key in result, key
    assert result["backbone"] == "small_cnn" and result["weights"] == "none" and result["image_size"] == 32
    assert 0.0 <= result["val_accuracy"] <= 1.0
    model_dir = Path(result["model_dir"])
    assert model_dir.parent == root / "models" / "pizza" and model_dir.name.isdigit()
    assert (model_dir / "saved_model.pb").is_file()
    meta = json.loads((model_dir / "assets.extra" / "pizzactl.json").read_text())
    assert meta["backbone"] == "small_cnn" and meta["image_size"] == 32
    assert meta["classes"] == ["not_pizza", "pizza"] and meta["threshold"] == 0.5
    assert meta["metrics"]["val_accuracy"] == result["val_accuracy"]
    assert meta["data_hash"] == load_dataset(root / "data").data_hash


@pytest.mark.slow
def test_run_directory_holds_config_metrics_history_plots_log_and_model(scratch_run):
    root, result = scratch_run
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == root / "runs" and run_dir.name.endswith("-small_cnn")
    assert {p.name for p in run_dir.iterdir()} >= RUN_FILES
    config = json.loads((run_dir / "config.json").read_text())
    assert config["backbone"] == "small_cnn" and config["mode"] == "scratch" and config["epochs"] == 2
    assert config["n_train"] + config["n_val"] == 32
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sum(map(sum, metrics["confusion_matrix"])) == config["n_val"] == metrics["n_val"]
    assert metrics["model_dir"] == result["model_dir"]
    with open(run_dir / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert 1 <= len(rows) <= 2 and {"loss", "val_loss", "val_accuracy"} <= set(rows[0])
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 1/2" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_saved_run_model_reloads_with_the_same_outputs(scratch_run):
    import keras
    import numpy as np

    import pizzactl.train.backbones  # noqa: F401  (registers the custom layers)
    from pizzactl.train.pixels import decode_images

    root, result = scratch_run
    model = keras.models.load_model(Path(result["run_dir"]) / "model.keras", compile=False)
    photos = sorted((root / "data" / "pizza").iterdir())[:2]
    p = model.predict(decode_images(photos, 32), verbose=0)
    assert p.shape == (2, 1) and np.all((p >= 0) & (p <= 1))


@pytest.mark.slow
def test_runs_list_shows_the_trained_run(scratch_run):
    from pizzactl.train.runs import list_runs

    root, result = scratch_run
    settings = load_settings({}, environ=env_for(root))
    (listed,) = list_runs(settings)
    assert listed["run_dir"] == result["run_dir"] and listed["status"] == "finished"
    assert listed["val_accuracy"] == result["val_accuracy"]


@pytest.fixture(scope="module")
def frozen_runs(tmp_path_factory, shared_photos):
    """The frozen-feature path twice on one cache: mobilenet_v3_small (random weights, 64 px),
    then mobilenet_v3_small and small_cnn together (a leaderboard)."""
    from pizzactl.train import train

    root = tmp_path_factory.mktemp("frozen")
    data = link_photos(root / "data", shared_photos, per_class=12)
    flags = {"data_dir": str(data), "backbone": "mobilenet_v3_small", "weights": "none", "image_size": 64, "epochs": 3}
    first = train(load_settings(flags, cwd=root, environ=env_for(root)), show_progress=False)
    cache = root / "cache" / "features"
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    flags = {**flags, "backbone": "mobilenet_v3_small,small_cnn", "epochs": 1}
    second = train(load_settings(flags, cwd=root, environ=env_for(root)), show_progress=False)
    return root, first, second, mtimes


@pytest.mark.slow
def test_frozen_path_caches_plain_flip_and_augmented_views(frozen_runs):
    _root, first, _, mtimes = frozen_runs
    assert first.features == {"computed": 6, "reused": 0}  # plain, flip, aug1..aug4
    assert len(mtimes) == 6
    assert first.best.config["mode"] == "frozen" and first.best.config["augmented_views"] == 4
    assert first.best.metrics["epochs_run"]["head"] >= 1
    assert (first.model_dir / "saved_model.pb").is_file()


def test_augmented_views_setting_overrides_the_recipe(tmp_path, shared_photos):
    """--augmented-views 1: the photo, its mirror and one augmented view are cached, no more,
    and the run's config says so (the recipe's 4 for mobilenet_v3_small yields to it)."""
    result = train_tiny(tmp_path, shared_photos, "mobilenet_v3_small", augmented_views=1)
    assert result.features == {"computed": 3, "reused": 0}
    views = sorted(path.name.split("-")[2] for path in (tmp_path / "cache" / "features").glob("*.npy"))
    assert views == ["aug1", "flip", "plain"]
    assert result.best.config["augmented_views"] == 1 and result.best.config["recipe"]["augmented_views"] == 1


def test_the_default_backbone_trains_heads_only_unless_fine_tuning_is_asked_for(tmp_path):
    """efficientnet_lite2 (the default) skips fine-tuning, which the nested protocol found worth
    nothing for it; lite0 keeps its fine-tuning; an explicit --fine-tune-epochs wins over both."""
    from pizzactl.train.backbones import get_backbone
    from pizzactl.train.context import plan

    def planned(flags):
        settings = load_settings(flags, cwd=tmp_path, environ={})
        return plan(settings, get_backbone(settings.backbone), None, (), (), cache=None, log=print)

    default = planned({})
    assert default.backbone.name == "efficientnet_lite2" and default.fine_tune_epochs == 0
    assert planned({"backbone": "efficientnet_lite0"}).fine_tune_epochs > 0
    assert planned({"fine_tune_epochs": 2}).fine_tune_epochs == 2


def test_negative_augmented_views_is_refused_with_a_hint(tmp_path, shared_photos):
    with pytest.raises(UsageError) as err:
        train_tiny(tmp_path, shared_photos, "mobilenet_v3_small", augmented_views=-1)
    assert "--augmented-views 0" in err.value.hint


@pytest.mark.slow
def test_second_run_computes_no_features(frozen_runs):
    root, _, second, mtimes = frozen_runs
    assert second.features == {"computed": 0, "reused": 6}
    cache = root / "cache" / "features"
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == mtimes


@pytest.mark.slow
def test_several_backbones_make_a_leaderboard_and_export_the_best(frozen_runs):
    _root, first, second, _ = frozen_runs
    board = second.as_dict()["leaderboard"]
    assert sorted(r["backbone"] for r in board) == ["mobilenet_v3_small", "small_cnn"]
    accuracies = [r["val_accuracy"] for r in board]
    assert accuracies == sorted(accuracies, reverse=True)
    assert second.best.backbone == board[0]["backbone"]
    meta = json.loads((second.model_dir / "assets.extra" / "pizzactl.json").read_text())
    assert meta["backbone"] == board[0]["backbone"]
    assert int(second.model_dir.name) == int(first.model_dir.name) + 1
    assert len({r["run_dir"] for r in board}) == 2


@pytest.mark.slow
def test_end_to_end_train_export_evaluate_on_photos_it_never_saw(scratch_run, shared_photos, tmp_path):
    """The user's path: train (above) -> exported model -> `pizzactl evaluate --json` on unseen photos."""
    root, result = scratch_run
    unseen = tmp_path / "unseen"
    for name, photos in shared_photos.items():  # scratch_run trained on the first 16 of each class
        (unseen / name).mkdir(parents=True)
        for photo in photos[100:110]:
            (unseen / name / photo.name).symlink_to(photo)
    proc = run_pizzactl(
        "evaluate", result["model_dir"], "--data", str(unseen), "--json", env={**os.environ, **env_for(root)}
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["n"] == 20
    assert sum(map(sum, metrics["confusion_matrix"])) == 20
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["roc_auc"] <= 1.0
    assert metrics["model_dir"] == result["model_dir"]


# --- FixRes (model size > training size) and averaged heads ------------------------------


def test_model_and_crop_size_follows_the_test_train_factor():
    from pizzactl.train.recipes import model_and_crop_size

    assert model_and_crop_size(None, 224, 1.0) == (224, 224)
    assert model_and_crop_size(160, 224, 1.0) == (160, 160)
    assert model_and_crop_size(None, 224, 1.15) == (256, 224)  # native size trains; the model is bigger
    assert model_and_crop_size(128, 224, 1.15) == (128, 112)  # a given size is the model's
    assert model_and_crop_size(32, 224, 1.15, minimum=32) == (32, 32)  # never below the backbone's minimum


def test_lite_and_small_cnn_recipes_train_smaller_than_they_serve():
    from pizzactl.train.backbones import get_backbone
    from pizzactl.train.recipes import model_and_crop_size, recipe_for

    lite = recipe_for(get_backbone("efficientnet_lite0"))
    assert model_and_crop_size(lite.image_size, 224, lite.test_size_factor) == (256, 224)
    assert lite.head_seeds > 1
    cnn = recipe_for(get_backbone("small_cnn"))
    assert model_and_crop_size(cnn.image_size, 128, cnn.test_size_factor) == (128, 112)
    assert recipe_for(get_backbone("mobilenet_v3_small")).test_size_factor == 1.0


def test_fit_heads_averages_the_heads_of_consecutive_seeds():
    import keras
    import numpy as np

    from pizzactl.train.heads import fit_head, fit_heads

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] + 0.3 * rng.normal(size=64) > 0).astype("float32")
    kw = dict(epochs=4, batch_size=16, lr=1e-2, dropout=0.0, patience=4)
    singles = []
    for seed in (5, 6, 7):
        keras.utils.set_random_seed(seed)
        singles.append(fit_head(x, y, x[:16], y[:16], seed=seed, **kw)[0].get_layer("probability").get_weights())
    messages, rows = _Log(), []
    first_only = fit_heads(x, y, x[:16], y[:16], n=1, seed=5, runlog=_Log(), rows=[], **kw)
    np.testing.assert_allclose(
        first_only.get_layer("probability").get_weights()[0], singles[0][0], rtol=1e-5, atol=1e-6
    )
    head = fit_heads(x, y, x[:16], y[:16], n=3, seed=5, runlog=messages, rows=rows, **kw)
    kernel, bias = head.get_layer("probability").get_weights()
    np.testing.assert_allclose(kernel, np.mean([w[0] for w in singles], axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, np.mean([w[1] for w in singles], axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(kernel, singles[0][0])  # really an average, not the first head
    assert any("Averaged 3 heads" in m for m in messages)
    assert {r["phase"] for r in rows} == {"head"} and len(rows) <= 4  # history: the first head only


@pytest.fixture(scope="module")
def fixres_run(tmp_path_factory, shared_photos):
    """efficientnet_lite0's recipe (FixRes + 5 averaged heads) at 64 px, random weights, 24 photos."""
    from pizzactl.train import train

    root = tmp_path_factory.mktemp("fixres")
    data = link_photos(root / "data", shared_photos, per_class=12)
    flags = {"data_dir": str(data), "backbone": "efficientnet_lite0", "weights": "none", "image_size": 64, "epochs": 2}
    settings = load_settings(flags, cwd=root, environ=env_for(root))
    return root, data, settings, train(settings, show_progress=False)


@pytest.mark.slow
def test_fixres_caches_features_at_the_training_size_and_exports_the_model_size(fixres_run):
    root, _, _, result = fixres_run
    config = result.best.config
    assert (config["image_size"], config["train_image_size"]) == (64, 56)
    names = [p.name for p in (root / "cache" / "features").glob("*.npy")]
    # the recipe fine-tunes on cached maps: those are cached (at the training size), not pooled features
    assert len(names) == 10 and all(
        n.startswith("efficientnet_lite0.block6d_add-56-") for n in names
    )  # plain, flip, aug1..8
    meta = json.loads((result.model_dir / "assets.extra" / "pizzactl.json").read_text())
    assert meta["image_size"] == 64
    log = (result.best.run_dir / "train.log").read_text()
    assert "Training at 56px for a 64px model" in log and "Averaged 5 heads" in log
    assert config["fine_tune_from"] == "block6d_add" and config["fine_tune_epochs"] >= 1
    assert result.best.metrics["epochs_run"]["fine_tune"] == config["fine_tune_epochs"]
    assert "on cached maps" in log


@pytest.mark.slow
def test_fixres_validation_measures_what_the_exported_model_answers(fixres_run):
    """val_accuracy/val_loss come from 64 px maps through the fine-tuned top (or the head alone
    if fine-tuning lost): the exported graph on the val files agrees, so it holds those weights."""
    import numpy as np
    import tensorflow as tf

    _root, data, settings, result = fixres_run
    _, val = stratified_split(load_dataset(data), settings.val_split, seed=settings.seed)
    fn = tf.saved_model.load(str(result.model_dir)).signatures["serving_default"]
    p = fn(image_bytes=tf.constant([r.path.read_bytes() for r in val]))["probability"].numpy().ravel()
    y = np.array([r.label for r in val], float)
    p = np.clip(p, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert result.best.metrics["val_loss"] == pytest.approx(loss, abs=1e-4)
    assert result.best.metrics["val_accuracy"] == pytest.approx(float(np.mean((p >= 0.5) == (y == 1))))


@pytest.mark.slow
def test_fixres_fine_tuning_runs_at_the_training_size_and_exports_the_model_size(fixres_run):
    """Fine-tuning runs at the training size (56 px); the saved and exported model takes 64 px.
    (fixres_run's recipe fine-tunes: no second efficientnet_lite0 training for this.)"""
    import keras

    from pizzactl.train.backbones import custom_objects

    _root, _, _, result = fixres_run
    run = result.best
    assert (
        run.config["train_image_size"] == 56
        and run.metrics["epochs_run"].get("fine_tune") == run.config["fine_tune_epochs"] >= 1
    )
    model = keras.models.load_model(run.run_dir / "model.keras", custom_objects=custom_objects(), compile=False)
    assert model.input_shape[1:3] == (64, 64)
    assert "Fine-tun" in (run.run_dir / "train.log").read_text()
    meta = json.loads((result.model_dir / "assets.extra" / "pizzactl.json").read_text())
    assert meta["image_size"] == 64


@pytest.mark.slow
def test_fine_tuning_without_a_tune_from_layer_runs_on_images(tmp_path, shared_photos):
    """mobilenet_v3_small has no `tune_from`: --fine-tune-epochs unfreezes its top over images."""
    result = train_tiny(tmp_path, shared_photos, "mobilenet_v3_small", fine_tune_epochs=1)
    assert result.best.config["fine_tune_from"] is None
    assert result.best.metrics["epochs_run"].get("fine_tune") == 1
    assert all(p.name.startswith("mobilenet_v3_small-64-") for p in (tmp_path / "cache" / "features").glob("*.npy"))
    assert "Fine-tuning the top of the backbone (" in (result.best.run_dir / "train.log").read_text()


def _maps_problem(seed: int = 0):
    """Tiny maps [N,4,4,3] whose class is the sign of channel 0's mean, and a 1x1-conv top."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    y = (rng.random(96) < 0.5).astype("float32")
    x = rng.normal(size=(96, 4, 4, 3)).astype("float32")
    x[:, :, :, 0] += np.where(y == 1, 0.8, -0.8)[:, None, None]
    maps = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(4, 1, name="top_conv")(maps)
    h = keras.layers.BatchNormalization(name="top_bn")(h)
    top = keras.Model(maps, keras.layers.GlobalAveragePooling2D()(h))
    for layer in top.layers:
        layer.trainable = False  # as the trainer leaves the backbone between phases
    return top, x[:64], y[:64], {"plain": x[64:], "flip": x[64:, :, ::-1]}, y[64:]


def test_fine_tune_cached_keeps_the_weight_average_when_it_beats_the_head():
    import keras
    import numpy as np

    from pizzactl.train.heads import build_head
    from pizzactl.train.recipes import Recipe
    from pizzactl.train.strategies.cached_fine_tune import fine_tune_cached

    keras.utils.set_random_seed(0)
    top, x, y, val, y_val = _maps_problem()
    head = build_head(4, 0.0)
    bn = [w.copy() for w in top.get_layer("top_bn").get_weights()]
    log, rows = _Log(), []
    p = fine_tune_cached(
        top,
        head,
        x,
        y,
        val,
        y_val,
        recipe=Recipe(fine_tune_lr=0.05, fine_tune_average_from=2),
        epochs=4,
        batch_size=16,
        seed=0,
        tta=True,
        runlog=log,
        rows=rows,
    )
    assert any("mean of epochs 2..4" in m for m in log), log
    assert [r["phase"] for r in rows] == ["fine_tune"] * 4
    # what it returns is the kept model's validation answer (mean over the map and its mirror)
    model = keras.Model(top.input, head(top.output))
    expected = (model.predict(val["plain"], verbose=0).ravel() + model.predict(val["flip"], verbose=0).ravel()) / 2
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)
    assert np.mean((p >= 0.5) == (y_val == 1)) >= 0.85
    for a, b in zip(bn, top.get_layer("top_bn").get_weights(), strict=False):
        np.testing.assert_array_equal(a, b)  # BatchNorm statistics never move
    assert not any(layer.trainable for layer in top.layers)  # frozen again afterwards


def test_fine_tune_cached_restores_the_head_alone_when_it_does_worse():
    import keras
    import numpy as np

    from pizzactl.train.heads import build_head
    from pizzactl.train.recipes import Recipe
    from pizzactl.train.strategies.cached_fine_tune import fine_tune_cached

    keras.utils.set_random_seed(0)
    top, x, y, val, y_val = _maps_problem()
    head = build_head(4, 0.0)
    head.get_layer("probability").set_weights([np.array([[3.0], [0], [0], [0]], "float32"), np.zeros(1, "float32")])
    before = [w.copy() for w in top.get_weights() + head.get_weights()]
    y_wrong = 1 - y  # training on flipped labels can only make validation worse
    log = _Log()
    fine_tune_cached(
        top,
        head,
        x,
        y_wrong,
        val,
        y_val,
        recipe=Recipe(fine_tune_lr=0.05),
        epochs=3,
        batch_size=16,
        seed=0,
        tta=True,
        runlog=log,
        rows=[],
    )
    assert any("kept the head" in m for m in log), log
    for a, b in zip(before, top.get_weights() + head.get_weights(), strict=False):
        np.testing.assert_array_equal(a, b)


def test_fine_tuning_validates_a_batch_at_a_time():
    """One pass over every validation map held the top's activations for all of them at once:
    ~1 MB per validation photo, the peak memory that grew with the data. The guard layer fails
    the graph if the validator ever feeds more rows than its batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pizzactl.train.strategies.cached_fine_tune import validator

    def at_most_8_rows(x):
        with tf.control_dependencies([tf.debugging.assert_less_equal(tf.shape(x)[0], 8)]):
            return tf.identity(x)

    keras.utils.set_random_seed(0)
    maps = keras.Input((4, 4, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(at_most_8_rows)(maps))
    model = keras.Model(maps, keras.layers.Dense(1, activation="sigmoid")(pooled))
    rng = np.random.default_rng(0)
    plain = rng.normal(size=(21, 4, 4, 3)).astype("float16")  # cached maps are float16
    val = {"plain": plain, "flip": plain[:, :, ::-1]}
    y_val = rng.integers(0, 2, 21)

    p, loss, accuracy = validator(model, val, y_val, tta=True, batch_size=8)()

    expected = np.mean([model.predict(val[v].astype("float32"), batch_size=8, verbose=0).ravel() for v in val], axis=0)
    assert p.shape == (21,)
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)
    assert accuracy == np.mean((p >= 0.5) == (y_val == 1))
    assert loss > 0


@pytest.mark.slow
def test_fine_tune_epochs_zero_turns_the_recipes_fine_tuning_off(tmp_path, shared_photos):
    """An explicit 0 beats efficientnet_lite0's recipe: pooled features are cached, no fine_tune phase."""
    result = train_tiny(tmp_path, shared_photos, "efficientnet_lite0", fine_tune_epochs=0)
    assert result.best.config["fine_tune_epochs"] == 0 and result.best.config["fine_tune_from"] is None
    assert "fine_tune" not in result.best.metrics["epochs_run"]
    names = [p.name for p in (tmp_path / "cache" / "features").glob("*.npy")]
    assert names and all(n.startswith("efficientnet_lite0-56-") for n in names)
