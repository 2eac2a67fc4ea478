"""Export: the SavedModel contract, versioning, atomic publication and the self-check."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pizzactl import __version__
from pizzactl.config import Settings
from pizzactl.errors import ExportError, ModelNotFoundError
from pizzactl.model.card import ModelCard, card_path
from pizzactl.model.store import (
    RunNotFoundError,
    find_run_dir,
    latest_version_dir,
    list_versions,
    resolve_model_dir,
)

from support.cli import invoke

# --- finding versions and runs (no TensorFlow) -------------------------------------------


def _fake_version(base: Path, name: str) -> Path:
    d = base / name
    d.mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"")
    return d


def test_latest_version_is_the_highest_integer_not_the_newest_or_a_temp_dir(tmp_path):
    base = tmp_path / "pizza"
    for name in ("2", "10", "9"):
        _fake_version(base, name)
    (base / ".tmp-1-abc").mkdir()
    (base / "11-broken").mkdir()
    (base / "notes.txt").write_text("hi")
    assert [v for v, _ in list_versions(tmp_path)] == [2, 9, 10]
    assert latest_version_dir(tmp_path) == base / "10"


def test_no_model_raises_model_not_found_with_a_hint(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        latest_version_dir(tmp_path / "models")
    assert "pizzactl train" in info.value.hint and "--models" in info.value.hint
    (tmp_path / "models" / "pizza" / ".tmp-1-x").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError):
        latest_version_dir(tmp_path / "models")


def test_resolve_model_dir_accepts_a_version_the_model_folder_or_the_models_dir(tmp_path):
    models = tmp_path / "models"
    _fake_version(models / "pizza", "1")
    v3 = _fake_version(models / "pizza", "3")
    assert resolve_model_dir(None, models) == v3
    assert resolve_model_dir(models, tmp_path / "elsewhere") == v3
    assert resolve_model_dir(models / "pizza", tmp_path / "elsewhere") == v3
    assert resolve_model_dir(models / "pizza" / "1", tmp_path / "elsewhere") == models / "pizza" / "1"
    with pytest.raises(ModelNotFoundError):
        resolve_model_dir(tmp_path, models)


def test_the_card_of_a_foreign_saved_model_says_it_was_not_exported_by_pizzactl(tmp_path):
    version = _fake_version(tmp_path / "pizza", "1")
    with pytest.raises(ModelNotFoundError, match="not exported by pizzactl"):
        ModelCard.load(version)


def test_find_run_dir_by_id_unique_prefix_or_path(tmp_path):
    runs = tmp_path / "runs"
    for name in ("20261124-101500-efficientnet_lite0", "20261124-113000-mobilenet_v3_small"):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.json").write_text("{}")
    s = Settings(runs_dir=runs)
    assert find_run_dir(s, "20261124-1130").name.endswith("mobilenet_v3_small")
    assert find_run_dir(s, "20261124-101500-efficientnet_lite0").name.startswith("20261124-1015")
    assert (
        find_run_dir(s, str(runs / "20261124-101500-efficientnet_lite0")) == runs / "20261124-101500-efficientnet_lite0"
    )
    with pytest.raises(RunNotFoundError, match="ambiguous"):
        find_run_dir(s, "20261124")
    with pytest.raises(RunNotFoundError, match="No run"):
        find_run_dir(s, "1999")


# --- the exported graph -------------------------------------------------------------------


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _photo_array(path: Path, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize(size))


@pytest.fixture(scope="module")
def loaded(tiny_model):
    import tensorflow as tf

    return tf.saved_model.load(str(tiny_model / "pizza" / "1"))


def _default(loaded, blobs):
    import tensorflow as tf

    res = loaded.signatures["serving_default"](image_bytes=tf.constant(blobs, dtype=tf.string))
    return res["probability"].numpy(), [x.decode() for x in res["label"].numpy()]


@pytest.mark.slow
def test_serving_default_on_real_jpegs_matches_the_trained_classifier(loaded, tiny_classifier):
    import tensorflow as tf

    from pizzactl.model.decode import decode_resize

    paths = tiny_classifier.photos[:3] + tiny_classifier.photos[-3:]
    blobs = [p.read_bytes() for p in paths]
    probs, labels = _default(loaded, blobs)
    pixels = tf.stack([decode_resize(tf.constant(b), 64) for b in blobs])
    want = np.asarray(tiny_classifier.model(pixels, training=False)).reshape(-1)
    assert probs.dtype == np.float32 and probs.shape == (6,)
    np.testing.assert_allclose(probs, want, atol=1e-4)
    assert labels == ["pizza" if p >= 0.5 else "not_pizza" for p in probs]
    assert len(set(np.round(probs, 4))) > 1, "a trained model gives different photos different scores"


@pytest.mark.slow
def test_png_greyscale_and_rgba_are_read_as_rgb(loaded, tiny_classifier):
    rgb = _photo_array(tiny_classifier.photos[-1])
    grey = (rgb.astype(np.float32) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    probs, labels = _default(
        loaded,
        [
            _encode(rgb, "PNG"),
            _encode(rgba, "PNG", "RGBA"),
            _encode(grey, "PNG", "L"),
            _encode(np.dstack([grey] * 3), "PNG"),
            _encode(rgb, "JPEG"),
        ],
    )
    assert probs[0] == pytest.approx(probs[1], abs=1e-6), "RGBA: alpha is dropped, colours kept"
    assert probs[2] == pytest.approx(probs[3], abs=1e-6), "greyscale is read as grey RGB"
    assert probs[0] != pytest.approx(probs[2], abs=1e-6), "colour matters to this model"
    assert probs[4] == pytest.approx(probs[0], abs=0.05)  # JPEG artefacts move it a little only
    assert all(label in ("pizza", "not_pizza") for label in labels)


@pytest.mark.slow
def test_both_signatures_agree_on_the_same_pixels(loaded):
    import tensorflow as tf

    rng = np.random.default_rng(3)
    arrays = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)  # already S x S: decoding is exact
    probs_bytes, labels_bytes = _default(loaded, [_encode(a, "PNG") for a in arrays])
    res = loaded.signatures["serving_pixels"](pixels=tf.constant(arrays))
    np.testing.assert_allclose(res["probability"].numpy(), probs_bytes, atol=1e-6)
    assert [x.decode() for x in res["label"].numpy()] == labels_bytes


@pytest.mark.slow
def test_an_empty_batch_gives_empty_outputs(loaded):
    probs, labels = _default(loaded, [])
    assert probs.shape == (0,) and labels == []


@pytest.mark.slow
def test_serving_pixels_freezes_to_a_graph_without_control_flow(loaded):
    """Grad-CAM (pizzactl.explain) freezes and prunes serving_pixels; If/While ops would break that."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(loaded.signatures["serving_pixels"])
    ops = {node.op for node in frozen.graph.as_graph_def().node}
    assert "Conv2D" in ops or "_FusedConv2D" in ops, "the model itself is inlined"
    assert not ops & {"If", "StatelessIf", "While", "StatelessWhile", "Switch", "Merge"}


@pytest.mark.slow
def test_metadata_describes_the_export(tiny_model, tiny_classifier, tmp_path):
    version = tiny_model / "pizza" / "1"
    meta = json.loads(card_path(version).read_text())  # the file, as any reader sees it
    assert meta["backbone"] == "tiny_cnn" and meta["weights"] == "none"
    assert meta["image_size"] == 64
    assert meta["classes"] == ["not_pizza", "pizza"] and meta["positive_class"] == "pizza"
    assert meta["threshold"] == 0.5
    assert meta["data_hash"] == tiny_classifier.metadata["data_hash"]
    assert meta["metrics"] == tiny_classifier.metadata["metrics"]
    assert meta["pizzactl_version"] == __version__
    created = dt.datetime.fromisoformat(meta["created"])
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(days=1)
    assert meta["signatures"]["serving_pixels"]["inputs"]["pixels"] == {"dtype": "uint8", "shape": [None, 64, 64, 3]}
    assert set(meta["signatures"]["serving_default"]["outputs"]) == {"probability", "label", "probabilities"}
    assert meta["self_check"]["n_images"] == 4 and meta["self_check"]["max_abs_diff"] <= 1e-4
    card = ModelCard.load(version)  # the typed card says the same and writes the very same bytes
    assert card.to_dict() == meta and card.classes == ("not_pizza", "pizza") and card.threshold == 0.5
    card.save(tmp_path)
    assert card_path(tmp_path).read_bytes() == card_path(version).read_bytes()


# --- versioning, self-check, atomicity -------------------------------------------------


@pytest.mark.slow
def test_export_takes_the_next_integer_and_cleans_dead_temp_dirs(tmp_path, tiny_classifier):
    from pizzactl.model.export import export_model

    base = tmp_path / "pizza"
    for name in ("3", "7"):
        _fake_version(base, name)
    (base / "latest").mkdir()
    dead = base / ".tmp-999999999-deadbeef"  # no such pid
    dead.mkdir()
    live = base / f".tmp-{os.getppid()}-cafe"  # a live process's export in progress: left alone
    live.mkdir()
    m = tiny_classifier
    v8 = export_model(m.model, tmp_path, m.metadata, m.check_images)
    v9 = export_model(m.model, tmp_path, m.metadata, m.check_images)
    assert (v8.name, v9.name) == ("8", "9")
    assert not dead.exists() and live.exists()
    assert (v9 / "saved_model.pb").is_file() and (v9 / "assets.extra" / "pizzactl.json").is_file()


def _python_side_effect_classifier(tiny_classifier):
    """A model whose call depends on Python state: traced once, its graph keeps one value."""
    import keras

    counter = {"calls": 0}

    class DriftingScale(keras.layers.Layer):
        def call(self, x):
            counter["calls"] += 1
            return x * (1.0 + 0.5 * counter["calls"])

    inputs = keras.Input((64, 64, 3))
    x = DriftingScale()(inputs)
    outputs = tiny_classifier.model(x)
    return keras.Model(inputs, outputs)


@pytest.mark.slow
def test_export_refuses_a_graph_that_disagrees_with_the_model_and_publishes_nothing(tmp_path, tiny_classifier):
    from pizzactl.model.export import export_model

    drifting = _python_side_effect_classifier(tiny_classifier)
    with pytest.raises(ExportError, match="disagrees"):
        export_model(drifting, tmp_path, tiny_classifier.metadata, tiny_classifier.check_images)
    assert list((tmp_path / "pizza").iterdir()) == []


@pytest.mark.slow
def test_verify_export_rejects_a_different_classifier(tiny_model, tiny_classifier):
    import keras

    from pizzactl.model.export import verify_export

    version = tiny_model / "pizza" / "1"
    summary = verify_export(version, tiny_classifier.model, tiny_classifier.check_images)
    assert summary["max_abs_diff"] <= 1e-4
    other = keras.models.clone_model(tiny_classifier.model)  # same layers, fresh random weights
    with pytest.raises(ExportError, match="disagrees"):
        verify_export(version, other, tiny_classifier.check_images)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, keras
    from pizzactl.model.export import export_model, synthetic_check_images
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(64, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    print("exporting", flush=True)
    export_model(model, sys.argv[1], {"backbone": "kill", "image_size": 64}, synthetic_check_images(64))
    """
)


@pytest.mark.slow
def test_an_export_killed_mid_write_leaves_no_version_and_the_next_export_works(tmp_path, tiny_classifier):
    from pizzactl.model.export import export_model

    models = tmp_path / "models"
    script = tmp_path / "export_then_die.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(models)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = models / "pizza"
    deadline = time.monotonic() + 300  # importing TensorFlow on a busy CI machine
    temp = None
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in base.glob(".tmp-*") if any(p.iterdir())] if base.is_dir() else []
        if temps:
            temp = temps[0]
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert temp is not None, f"the export never started writing: {stderr.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert list_versions(models) == [], "a killed export must not leave a version directory"
    assert temp.exists(), "killed mid-write: its temp dir is still there"

    version = export_model(tiny_classifier.model, models, tiny_classifier.metadata, tiny_classifier.check_images)
    assert version == base / "1"
    assert not temp.exists(), "the next export removes the dead export's temp dir"


# --- re-exporting a run ---------------------------------------------------------------


@pytest.mark.slow
def test_export_run_reexports_a_run_dir_with_its_config_and_metrics(tmp_path, tiny_classifier, shared_data):
    import tensorflow as tf

    from pizzactl.train.reexport import export_run

    run = tmp_path / "runs" / "20261124-160000-tiny_cnn"
    run.mkdir(parents=True)
    tiny_classifier.model.save(run / "model.keras")
    config = {
        "run_id": run.name,
        "backbone": "tiny_cnn",
        "weights": "none",
        "image_size": 64,
        "classes": ["not_pizza", "pizza"],
        "threshold": 0.4,
        "data_dir": str(shared_data),
        "data_hash": "abc123",
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(
        json.dumps({"val_accuracy": 0.61, "val_roc_auc": 0.66, "model_dir": "old/pizza/1"})
    )
    s = Settings(runs_dir=tmp_path / "runs", models_dir=tmp_path / "models")

    version = export_run(s, "20261124-16")
    assert version == tmp_path / "models" / "pizza" / "1"
    meta = ModelCard.load(version).to_dict()
    assert meta["run_id"] == run.name and meta["backbone"] == "tiny_cnn" and meta["threshold"] == 0.4
    assert meta["metrics"] == {"val_accuracy": 0.61, "val_roc_auc": 0.66} and meta["data_hash"] == "abc123"
    assert meta["self_check"]["n_images"] == 4  # two real photos per class from data_dir
    # the photos no longer hash as the run recorded: its validation split cannot be trusted as held out
    assert meta["runtimes"]["litert"]["ok"] and "held-out" in meta["runtimes"]["litert-int8"]["reason"]

    blobs = [p.read_bytes() for p in tiny_classifier.photos[18:22]]
    res = tf.saved_model.load(str(version)).signatures["serving_default"](image_bytes=tf.constant(blobs))
    again = tf.saved_model.load(str(tiny_classifier_export(tmp_path, tiny_classifier))).signatures["serving_default"](
        image_bytes=tf.constant(blobs)
    )
    np.testing.assert_allclose(res["probability"].numpy(), again["probability"].numpy(), atol=1e-5)
    labels = [x.decode() for x in res["label"].numpy()]
    assert labels == ["pizza" if p >= 0.4 else "not_pizza" for p in res["probability"].numpy()]


@pytest.mark.slow
def test_export_cli_publishes_the_next_version_and_prints_it(tmp_path, tiny_classifier):
    run = tmp_path / "runs" / "20261124-170000-tiny_cnn"
    run.mkdir(parents=True)
    tiny_classifier.model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"backbone": "tiny_cnn", "image_size": 64}))
    _fake_version(tmp_path / "models" / "pizza", "4")
    result = invoke(
        "export",
        "20261124-17",
        "--to",
        str(tmp_path / "models"),
        "--json",
        env={"PIZZACTL_RUNS_DIR": str(tmp_path / "runs")},
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == {"model_dir": str(tmp_path / "models" / "pizza" / "5"), "version": 5}
    meta = ModelCard.load(tmp_path / "models" / "pizza" / "5").to_dict()
    assert meta["classes"] == ["not_pizza", "pizza"] and meta["threshold"] == 0.5  # defaults
    assert meta["self_check"]["n_images"] == 3  # no data_dir in the run: synthetic images


def tiny_classifier_export(tmp_path, tiny_classifier) -> Path:
    from pizzactl.model.export import export_model

    return export_model(
        tiny_classifier.model, tmp_path / "direct", tiny_classifier.metadata, tiny_classifier.check_images
    )


def test_export_run_of_an_unfinished_run_says_so(tmp_path):
    from pizzactl.train.reexport import export_run

    run = tmp_path / "runs" / "half"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"no model\.keras"):
        export_run(Settings(runs_dir=tmp_path / "runs", models_dir=tmp_path / "models"), "half")


@pytest.mark.slow
def test_metadata_that_contradicts_the_model_input_is_refused(tmp_path, tiny_classifier):
    from pizzactl.model.export import export_model

    with pytest.raises(ExportError, match="image_size 224"):
        export_model(
            tiny_classifier.model,
            tmp_path,
            {**tiny_classifier.metadata, "image_size": 224},
            tiny_classifier.check_images,
        )
    assert not (tmp_path / "pizza").exists() or list((tmp_path / "pizza").iterdir()) == []


@pytest.mark.slow
def test_numpy_metrics_are_written_as_json_numbers(tmp_path, tiny_classifier):
    from pizzactl.model.export import export_model

    metrics = {"val_accuracy": np.float32(0.75), "confusion_matrix": np.array([[3, 1], [0, 4]])}
    version = export_model(
        tiny_classifier.model, tmp_path, {**tiny_classifier.metadata, "metrics": metrics}, tiny_classifier.check_images
    )
    assert ModelCard.load(version).metrics == {"val_accuracy": 0.75, "confusion_matrix": [[3, 1], [0, 4]]}


# --- more than two classes ---------------------------------------------------------------------

from pizzactl.model.export import export_model  # noqa: E402  (TensorFlow is imported inside its functions)


def _softmax_classifier(n_classes: int, size: int = 32, seed: int = 0):
    """float32 [N,S,S,3] -> softmax [N, n_classes], weights from a seeded numpy RNG."""
    import keras

    pixels = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(pixels)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(pixels, keras.layers.Dense(n_classes, activation="softmax")(x))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 2.0, w.shape).astype("float32") for w in model.get_weights()])
    return model


@pytest.mark.slow
def test_a_softmax_model_exports_probabilities_the_most_probable_label_and_its_probability(tmp_path, tiny_classifier):
    import tensorflow as tf

    from pizzactl.model.decode import decode_resize

    classes = ["hot dog", "pizza", "sushi 🍣"]
    model = _softmax_classifier(3)
    blobs = [p.read_bytes() for p in tiny_classifier.photos[::5]]
    version = export_model(model, tmp_path, {"image_size": 32, "classes": classes}, blobs)
    meta = ModelCard.load(version).to_dict()
    assert meta["classes"] == classes and meta["threshold"] is None and meta["positive_class"] is None
    assert meta["signatures"]["serving_pixels"]["outputs"]["probabilities"] == {"dtype": "float32", "shape": [None, 3]}
    out = tf.saved_model.load(str(version)).signatures["serving_default"](image_bytes=tf.constant(blobs))
    want = model(tf.stack([decode_resize(b, 32) for b in blobs])).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=1e-5)
    labels = [x.decode() for x in out["label"].numpy()]
    assert labels == [classes[i] for i in want.argmax(axis=1)]
    np.testing.assert_allclose(out["probability"].numpy(), want.max(axis=1), atol=1e-5)
    assert len(set(labels)) > 1  # the photos span several answers


@pytest.mark.slow
def test_a_binary_model_answers_one_minus_p_and_p(tiny_model, tiny_classifier):
    import tensorflow as tf

    fn = tf.saved_model.load(str(latest_version_dir(tiny_model))).signatures["serving_default"]
    out = fn(image_bytes=tf.constant(tiny_classifier.check_images))
    p, rows = out["probability"].numpy(), out["probabilities"].numpy()
    np.testing.assert_array_equal(rows[:, 1], p)  # the same float32 values: probability did not change
    np.testing.assert_allclose(rows[:, 0], 1 - p, atol=1e-7)
    assert fn(image_bytes=tf.constant([], tf.string))["probabilities"].shape == (0, 2)


@pytest.mark.slow
def test_classes_that_do_not_fit_the_model_are_refused(tmp_path):
    model = _softmax_classifier(3)
    with pytest.raises(ExportError) as info:
        export_model(model, tmp_path, {"image_size": 32, "classes": ["a", "b"]}, [])
    assert "answers 3 probabilities" in info.value.message and "classes the model was trained on" in info.value.hint
    with pytest.raises(ExportError) as info:
        export_model(model, tmp_path, {"image_size": 32, "classes": ["a", "a", "b"]}, [])
    assert "distinct" in info.value.message
    assert list_versions(tmp_path) == []


# --- faster runtimes converted beside the SavedModel (pizzactl.model.litert) -------------------


@pytest.mark.slow
def test_export_converts_litert_beside_the_savedmodel_and_checks_it(tiny_model):
    """float32 LiteRT agrees to ~1e-7; int8 needs held-out images to be judged, and the fixture has
    none: it fails the check (auto will not run it) but stays for whoever asks for it by name."""
    version = tiny_model / "pizza" / "1"
    runtimes = ModelCard.load(version).runtimes
    litert = runtimes["litert"]
    assert litert["ok"] is True and litert["max_abs_diff"] <= 1e-4
    assert (version / litert["file"]).is_file() and litert["file"].startswith("assets.extra/")  # TF Serving ignores it
    int8 = runtimes["litert-int8"]
    assert int8["ok"] is False and "held-out" in int8["reason"]
    assert (version / int8["file"]).is_file() and int8["file"] == "assets.extra/litert/classifier-int8.tflite"


@pytest.mark.slow
def test_litert_answers_a_softmax_model_as_the_savedmodel_does(tmp_path, tiny_classifier, shared_photos):
    """Three classes: LiteRT's answers have TensorFlow's shape (probabilities [N, 3], the argmax label
    and its probability), export's max |dp| is over every class's column, held-out accuracy
    compares the labels each runtime answers with the true classes, and int8's rows sum to 1."""
    import numpy as np

    from pizzactl.model.runtimes import SIGNATURE, LiteRTRuntime, TensorFlowRuntime

    classes = ["hot dog", "pizza", "sushi 🍣"]
    check = [p.read_bytes() for p in tiny_classifier.photos[::5]]
    photos = [*shared_photos["not_pizza"][40:52], *shared_photos["pizza"][40:52]]
    holdout = [(p.read_bytes(), i % 3) for i, p in enumerate(photos)]
    version = export_model(
        _softmax_classifier(3), tmp_path, {"image_size": 32, "classes": classes}, check, holdout=holdout
    )
    runtimes = ModelCard.load(version).runtimes
    tf_rt, lite = TensorFlowRuntime.load(version, 1), LiteRTRuntime.load(version, 1, "litert", threads=2)
    want, got = (rt.run(SIGNATURE, {"image_bytes": check}) for rt in (tf_rt, lite))
    assert set(got) == set(want) and got["probabilities"].shape == (len(check), 3)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    assert list(got["label"]) == list(want["label"]) and len(set(got["label"])) > 1
    np.testing.assert_array_equal(got["probability"], got["probabilities"].max(axis=1))
    everything = check + [b for b, _ in holdout]  # export's |dp| is over the check and held-out photos
    want_all, got_all = (rt.run(SIGNATURE, {"image_bytes": everything}) for rt in (tf_rt, lite))
    diff = float(np.max(np.abs(got_all["probabilities"] - want_all["probabilities"])))
    assert runtimes["litert"]["ok"] is True and runtimes["litert"]["max_abs_diff"] == pytest.approx(diff, abs=1e-9)
    truth = np.array([label for _, label in holdout])
    answered = tf_rt.run(SIGNATURE, {"image_bytes": [b for b, _ in holdout]})["label"]
    accuracy = float(np.mean([classes.index(x.decode()) for x in answered] == truth))
    assert runtimes["litert-int8"]["holdout_accuracy"]["savedmodel"] == pytest.approx(accuracy)
    assert lite.run(SIGNATURE, {"image_bytes": []})["probabilities"].shape == (0, 3)
    int8 = LiteRTRuntime.load(version, 1, "litert-int8").run(SIGNATURE, {"image_bytes": check})
    np.testing.assert_allclose(int8["probabilities"].sum(axis=1), 1.0, atol=1e-6)  # 8-bit steps, rescaled


def _held_out(shared_photos, first: int = 40, last: int = 60) -> list[tuple[bytes, int]]:
    """Shared photos the tiny classifier was not fitted on (it saw the first 40 of each class)."""
    held_out = [(p.read_bytes(), 0) for p in shared_photos["not_pizza"][first:last]]
    return held_out + [(p.read_bytes(), 1) for p in shared_photos["pizza"][first:last]]


@pytest.mark.slow
def test_int8_is_judged_by_the_one_sided_rule_and_its_evidence_is_written(tmp_path, tiny_classifier, shared_photos):
    from pizzactl.model.litert import judge

    held_out = _held_out(shared_photos)
    m = tiny_classifier
    version = export_model(
        m.model,
        tmp_path,
        m.metadata,
        m.check_images,
        holdout=held_out,
        calibration=[b for b, _ in held_out[::4]],
        runtimes=("litert-int8",),
    )
    entry = ModelCard.load(version).runtimes["litert-int8"]
    accuracy, flips = entry["holdout_accuracy"], entry["flips"]
    assert accuracy["n"] == 40 and 0 <= accuracy["litert-int8"] <= 1 and 0 <= accuracy["savedmodel"] <= 1
    assert accuracy["litert-int8"] - accuracy["savedmodel"] == pytest.approx((flips["better"] - flips["worse"]) / 40)
    assert entry["abs_diff"]["n"] == 40 + len(m.check_images) and entry["abs_diff"]["p95"] <= entry["max_abs_diff"]
    import numpy as np

    worse, better = flips["worse"], flips["better"]
    reference = np.array([True] * worse + [False] * better, dtype=bool)
    assert (judge("litert-int8", np.array([entry["abs_diff"]["p95"]]), reference, ~reference, {}) == []) == entry["ok"]
    assert (version / "assets.extra/litert/classifier-int8.tflite").is_file()  # checked or not: opt-in by name
    assert set(ModelCard.load(version).runtimes) == {"litert-int8"}


def test_the_rule_refuses_a_runtime_only_when_the_sample_shows_it_worse():
    """One-sided: more right answers never count against an artefact; a few flips among hundreds
    are within chance; many more flips against than for it, or a typical |dp| over the tolerance, refuse it."""
    import numpy as np

    from pizzactl.model.litert import binomial_tail, judge

    def verdict(worse: int, better: int, n: int = 314, dp: float = 0.01) -> list[str]:
        reference = np.array([True] * worse + [False] * better + [True] * (n - worse - better))
        runtime = np.array([False] * worse + [True] * better + [True] * (n - worse - better))
        return judge("litert-int8", np.full(n, dp), reference, runtime, {})

    assert binomial_tail(3, 3) == 0.125 and binomial_tail(0, 0) == 1.0 and binomial_tail(0, 5) == 1.0
    assert binomial_tail(5, 7) == pytest.approx(29 / 128)
    assert verdict(0, 2) == [] and verdict(0, 20) == []  # better: the old two-sided rule refused this
    assert verdict(3, 0) == [] and verdict(2, 2) == []  # within what 314 photos can tell from chance
    assert "worse on held-out photos: 10 wrong" in verdict(10, 2)[0]  # p = 0.019
    assert "worse" in verdict(5, 0)[0]  # p = 0.031
    assert "95th percentile" in verdict(0, 0, dp=0.2)[0]
    dp = np.full(100, 0.01)
    dp[:4] = 0.3  # 4 photos of 100 far off: the typical photo still agrees
    assert judge("litert-int8", dp, np.ones(100, bool), np.ones(100, bool), {}) == []
    assert judge("litert", dp, np.ones(100, bool), np.ones(100, bool), {})  # float: every photo within 1e-4
    assert "no held-out" in judge("litert-int8", dp, np.zeros(0, bool), np.zeros(0, bool), {})[0]


@pytest.mark.slow
def test_an_int8_artefact_that_is_really_worse_is_still_refused(tmp_path, tiny_classifier, shared_photos):
    """Calibrated on black frames, int8's ranges clip every real photo's activations: the artefact
    answers the held-out photos far worse than the SavedModel, and the rule must still refuse it."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 0, 0)).save(buf, format="PNG")
    held_out = _held_out(shared_photos, 40, 90)
    m = tiny_classifier
    version = export_model(
        m.model,
        tmp_path,
        m.metadata,
        m.check_images,
        holdout=held_out,
        calibration=[buf.getvalue()] * 8,
        runtimes=("litert-int8",),
    )
    entry = ModelCard.load(version).runtimes["litert-int8"]
    assert entry["ok"] is False, entry
    assert entry["flips"]["worse"] > entry["flips"]["better"] and "worse on held-out photos" in entry["reason"]


@pytest.mark.slow
def test_a_model_the_converter_refuses_is_published_without_the_artefact(tmp_path, tiny_classifier, monkeypatch):
    """The converter's own error for ops LiteRT lacks is ConverterError ("Some of the operators in the model
    are not supported by the standard TensorFlow Lite runtime", TF's converter docs); export goes on."""
    import tensorflow as tf
    from tensorflow.lite.python.convert_phase import ConverterError

    class Refusing:
        def __init__(self, model):
            self.optimizations = []

        def convert(self):
            raise ConverterError("Some ops are not supported by the native TFLite runtime: FlexErf")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", Refusing)
    m = tiny_classifier
    version = export_model(m.model, tmp_path, m.metadata, m.check_images, runtimes=("litert",))
    entry = ModelCard.load(version).runtimes["litert"]
    assert entry["ok"] is False and "conversion failed" in entry["reason"] and "FlexErf" in entry["reason"]
    assert (version / "saved_model.pb").is_file() and not (version / "assets.extra" / "litert").exists()


@pytest.mark.slow
def test_the_conversion_prints_one_line_per_artefact_and_keeps_the_rest_in_the_debug_log(
    tmp_path, tiny_classifier, shared_photos, capfd, caplog
):
    """Keras prints the SavedModel it writes for the converter, a TensorSpec line per captured
    variable (~650 lines for the default backbone); the quantizer and the XNNPACK delegate write
    their own lines to file descriptor 2. A user sees one line per artefact."""
    caplog.set_level("DEBUG", logger="pizzactl.model.litert")
    m = tiny_classifier
    held_out = _held_out(shared_photos)
    export_model(m.model, tmp_path, m.metadata, m.check_images, holdout=held_out, calibration=[b for b, _ in held_out])
    out, err = capfd.readouterr()
    for noise in ("Saved artifact", "TensorSpec", "fully_quantize", "XNNPACK delegate"):
        assert noise not in out + err, (noise, err)
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("litert")] == ["litert", "litert-int8"]
    assert "TensorSpec" in caplog.text  # --debug's log still has it


def _calibration_classes(calibration: list[bytes], root: Path) -> list[str]:
    owner = {p.read_bytes(): p.parent.name for p in root.glob("*/*.jpg")}
    return [owner[b] for b in calibration]


@pytest.mark.parametrize("asked", [10, 40, 100])
def test_calibration_draws_every_class_in_its_share_whatever_the_size(tmp_path, copy_photos, asked):
    """Issue 25: the training split lists its photos class by class, and export calibrated int8 on
    the first 100 images it was given: asked for 400 (or 200), those were all not_pizza and the int8
    Lite2 answered not_pizza for every photo. The images handed over, and the ones the converter
    keeps of a longer list, must hold each class in its share, from the first ones on."""
    from pizzactl.data.dataset import load_dataset
    from pizzactl.model.litert import calibration_sample
    from pizzactl.train.reexport import run_split

    root = copy_photos(60)  # 48 training photos per class at val_split 0.2
    config = {"data_dir": str(root), "data_hash": load_dataset(root, check=False).data_hash}
    calibration, holdout = run_split(config, calibration_size=asked)
    classes = _calibration_classes(calibration, root)
    assert len(holdout) == 24 and len(calibration) == min(asked, 96)
    assert abs(classes.count("pizza") - classes.count("not_pizza")) <= 1
    head = classes[: max(2, len(classes) // 4)]  # a first part: both classes, not one of them
    assert abs(head.count("pizza") - head.count("not_pizza")) <= 1
    by_class = sorted(calibration, key=lambda b: classes[calibration.index(b)])  # as a split lists them
    for ordered in (by_class, calibration):  # class by class, and alternating
        kept = _calibration_classes(calibration_sample(ordered, len(ordered) // 2), root)
        assert len(kept) == len(ordered) // 2 and min(kept.count("pizza"), kept.count("not_pizza")) >= len(kept) // 4


def _colour_photos(n: int, colour: tuple[int, int, int], seed: int) -> list[bytes]:
    """Noisy PNGs of one colour: a class the colour model below tells apart by red minus blue."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (24, 24, 3)), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@pytest.mark.slow
def test_int8_calibrated_on_a_split_listed_class_by_class_answers_both_classes(tmp_path):
    """Issue 25: int8's logit range comes from the calibration images alone. Given more training
    images than it calibrates on, listed class by class as a split lists them, export kept the
    first ones (one class): every logit of the other class was clipped at the range's end (the
    Lite2's logit range was [-12.2, 0], so P(pizza) <= 0.5 for every photo) and int8 answered one
    class. Now the images it keeps are drawn from the whole list. The model: P(pizza) = sigmoid of
    (mean red - mean blue) / 20, so the SavedModel tells the two colours apart with certainty."""
    import keras

    from pizzactl.model.litert import MAX_CALIBRATION

    inputs = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([[0.05], [0.0], [-0.05]], np.float32), np.zeros(1, np.float32)])
    blue, red = (60, 90, 200), (200, 90, 60)  # not_pizza, pizza
    calibration = _colour_photos(MAX_CALIBRATION + 20, blue, 1) + _colour_photos(MAX_CALIBRATION + 20, red, 2)
    held_out = [(b, 0) for b in _colour_photos(20, blue, 3)] + [(b, 1) for b in _colour_photos(20, red, 4)]
    metadata = {"image_size": 16, "classes": ["not_pizza", "pizza"], "threshold": 0.5}
    version = export_model(
        model,
        tmp_path,
        metadata,
        [b for b, _ in held_out[::10]],
        holdout=held_out,
        calibration=calibration,
        runtimes=("litert-int8",),
    )
    entry = ModelCard.load(version).runtimes["litert-int8"]
    assert entry["ok"] is True and entry["abs_diff"]["p95"] <= 0.05 and entry["flips"]["worse"] == 0, entry
    assert entry["holdout_accuracy"]["litert-int8"] == 1.0, entry
