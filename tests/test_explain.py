"""Grad-CAM computed from the exported SavedModel alone (no Keras model, no training run)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cam(tiny_model):
    from pizzactl.explain import GradCam

    return GradCam.load(tiny_model / "pizza" / "1")


def test_the_pruned_graph_gives_the_same_probability_as_the_serving_signature(cam, tiny_model, tiny_classifier):
    import tensorflow as tf

    serving = tf.saved_model.load(str(tiny_model / "pizza" / "1")).signatures["serving_default"]
    for photo in tiny_classifier.photos[:2] + tiny_classifier.photos[-2:]:
        data = photo.read_bytes()
        _, p = cam.heatmap(data)
        expected = float(serving(image_bytes=tf.constant([data]))["probability"].numpy()[0])
        assert p == pytest.approx(expected, abs=1e-3)  # uint8 rounding of the pixels only


def test_the_feature_map_is_the_last_convolution_before_global_pooling(cam):
    # the tiny CNN: 64 -> conv stride 2 -> 31 -> conv stride 2 -> 15 -> global average pooling
    assert "/conv_last" in cam.feature_tensor.lower() and "conv_first" not in cam.feature_tensor.lower()


def test_heatmap_is_a_normalized_map_over_the_feature_grid(cam, tiny_classifier):
    maps = [cam.heatmap(p.read_bytes())[0] for p in tiny_classifier.photos[:3] + tiny_classifier.photos[-3:]]
    for m in maps:
        assert m.shape == (15, 15) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0
    assert any(m.max() == pytest.approx(1.0) for m in maps)  # some evidence somewhere
    assert not all(np.allclose(maps[0], m) for m in maps[1:])  # it depends on the photo


def test_explain_image_writes_an_overlay_png_of_the_photo(cam, tiny_classifier, tmp_path):
    from PIL import Image

    from pizzactl.explain import explain_image

    photo = tiny_classifier.photos[-1]
    result = explain_image(cam, photo.read_bytes(), tmp_path / "out" / "cam.png")
    with Image.open(result["path"]) as img, Image.open(photo) as original:
        assert img.format == "PNG" and img.mode == "RGB"
        scale = min(512 / max(original.size), 1.0)
        assert img.size == (round(original.width * scale), round(original.height * scale))
        pixels = np.asarray(img, dtype=np.float32)
        plain = np.asarray(original.convert("RGB").resize(img.size), dtype=np.float32)
        assert np.abs(pixels - plain).mean() > 5  # the heatmap is blended in
    assert result["label"] in ("pizza", "not_pizza") and 0 <= result["probability"] <= 1


def test_a_corrupt_image_is_a_clear_error(cam):
    from pizzactl.explain import ExplainError

    with pytest.raises(ExplainError):
        cam.heatmap(b"\xff\xd8\xff\xe0 not a jpeg")


@pytest.fixture(scope="module")
def tta_model(tmp_path_factory, tiny_classifier):
    """The trainer's classifier shape with test-time augmentation: the backbone runs on the photo and its mirror."""
    import keras

    from pizzactl.model.export import export_model
    from pizzactl.train.heads import build_classifier, build_head

    keras.utils.set_random_seed(3)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(12, 3, strides=2, activation="relu")(x))
    extractor = keras.Model(inputs, x, name="extractor")
    classifier = build_classifier(extractor, build_head(12, 0.1), 64, tta=True)
    models = tmp_path_factory.mktemp("tta_models")
    meta = {**tiny_classifier.metadata, "backbone": "tiny_tta"}
    return export_model(classifier, models, meta, tiny_classifier.check_images)


def test_with_test_time_augmentation_both_passes_count_and_a_mirrored_photo_gives_the_mirrored_map(
    tta_model, tiny_classifier
):
    import io

    import tensorflow as tf
    from PIL import Image, ImageOps

    from pizzactl.explain import GradCam

    cam = GradCam.load(tta_model)
    assert sorted(cam.mirrored) == [False, True]  # one pass on the photo, one on its mirror image
    data = tiny_classifier.photos[-1].read_bytes()
    heat, p = cam.heatmap(data)
    serving = tf.saved_model.load(str(tta_model)).signatures["serving_default"]
    assert p == pytest.approx(float(serving(image_bytes=tf.constant([data]))["probability"].numpy()[0]), abs=1e-3)
    buf = io.BytesIO()
    ImageOps.mirror(Image.open(io.BytesIO(data))).save(buf, "PNG")
    mirrored_heat, mirrored_p = cam.heatmap(buf.getvalue())
    assert mirrored_p == pytest.approx(p, abs=1e-3)  # the model is mirror-symmetric by construction
    assert np.abs(mirrored_heat[:, ::-1] - heat).max() < 0.1


def test_explain_fetches_urls_under_the_gateways_policy(tiny_model, photo_server, tmp_path):
    """A URL is fetched again for its overlay through serving.fetch: loopback only when allowed."""
    from pizzactl.config import load_settings
    from pizzactl.explain import explain_sources
    from pizzactl.predict import Source

    photo_server.redirects["/hop.jpg"] = "/pizza.jpg"
    items = [Source(text=f"{photo_server.url}/hop.jpg", kind="url")]
    for allow in (False, True):
        settings = load_settings(
            {"models_dir": tiny_model, "allow_private_urls": allow, "state_dir": tmp_path / "state"},
            environ={},
            cwd=tmp_path,
        )
        results = [{"label": "pizza", "probability": 0.9, "model_version": 1}]
        explain_sources(settings, items, results, tmp_path / f"out-{allow}")
        if allow:
            assert (tmp_path / "out-True" / "hop.gradcam.png").is_file(), results
        else:
            assert "loopback" in results[0]["explanation_error"] and "explanation" not in results[0]


@pytest.fixture(scope="module")
def old_binary_export(tiny_model, tiny_classifier, tmp_path_factory):
    """The tiny classifier exported as pizzactl did before N classes (main at d3783fd:
    `build_serving_module` answered `probability` and `label` only), with its pizzactl.json."""
    import shutil

    import tensorflow as tf

    from pizzactl.model.decode import decode_resize

    classifier, size = tiny_classifier.model, tiny_classifier.image_size

    def outputs(p):
        return {"probability": p, "label": tf.where(p >= 0.5, tf.constant("pizza"), tf.constant("not_pizza"))}

    def probability(pixels):
        return tf.reshape(tf.cast(classifier(pixels, training=False), tf.float32), [-1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        pixels = tf.map_fn(
            lambda b: decode_resize(b, size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return outputs(
            tf.cond(tf.size(image_bytes) > 0, lambda: probability(pixels), lambda: tf.zeros([0], tf.float32))
        )

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")])
    def serving_pixels(pixels):
        return outputs(probability(tf.cast(pixels, tf.float32)))

    module = tf.Module()
    module.classifier, module.serving_default, module.serving_pixels = classifier, serving_default, serving_pixels
    version = tmp_path_factory.mktemp("old_models") / "pizza" / "1"
    tf.saved_model.save(
        module, str(version), signatures={"serving_default": serving_default, "serving_pixels": serving_pixels}
    )
    shutil.copytree(tiny_model / "pizza" / "1" / "assets.extra", version / "assets.extra")
    return version


def test_an_export_from_before_n_classes_is_still_explained_and_evaluated(old_binary_export, tiny_classifier, tmp_path):
    import tensorflow as tf

    from pizzactl.config import Settings
    from pizzactl.evaluate import evaluate
    from pizzactl.explain import GradCam

    outputs = tf.saved_model.load(str(old_binary_export)).signatures["serving_default"].structured_outputs
    assert set(outputs) == {"probability", "label"}
    cam = GradCam.load(old_binary_export)
    assert cam.per_class is False
    for photo in (tiny_classifier.photos[0], tiny_classifier.photos[-1]):
        found = cam.explain(photo.read_bytes())
        p = found.probabilities["pizza"]
        assert found.probability == p and found.probabilities["not_pizza"] == pytest.approx(1 - p)
        assert found.label == ("pizza" if p >= 0.5 else "not_pizza") and found.cam.max() <= 1.0
    data = tmp_path / "data"
    for name in ("pizza", "not_pizza"):
        (data / name).mkdir(parents=True)
    for photo in tiny_classifier.photos[:3] + tiny_classifier.photos[-3:]:
        (data / photo.parent.name / photo.name).symlink_to(photo)
    m = evaluate(Settings(data_dir=data, models_dir=old_binary_export.parents[1]), progress=False)
    assert m["n"] == 6 and len(m["confusion_matrix"]) == 2 and set(m["per_class"]) == {"not_pizza", "pizza"}
