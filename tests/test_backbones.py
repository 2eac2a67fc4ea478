"""The backbone registry: every entry builds, and its graph preprocesses 0..255 pixels itself.

What proves "no 0-1 vs 0-255 bug": for each Keras family the features of our model on a 0..255
image equal Keras' documented recipe, `base(preprocess_input(x))` (the base built with pooling="avg"), with
`preprocess_input` taken from keras.applications (not re-typed here); for families whose Keras
model preprocesses itself, the layers inside it map 0..255 onto the ImageNet mode their weights
were trained with; and feeding 0..1 pixels gives clearly different features.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from pizzactl.errors import UsageError, WeightsError
from pizzactl.train.backbones import REGISTRY, freeze, get_backbone, resolve_weights, unfreeze_top
from pizzactl.train.backbones.preprocess import IMAGENET_STD_RGB

REQUIRED = {
    "xception": 299,
    "inception_v3": 299,
    "vgg16": 224,
    "resnet50": 224,
    "efficientnet_b0": 224,
    "efficientnet_b3": 300,
    "efficientnetv2_b0": 224,
    "mobilenet_v3_small": 224,
    "mobilenet_v3_large": 224,
    "convnext_tiny": 224,
    "small_cnn": 128,
}
KERAS_MODE = sorted(n for n, b in REGISTRY.items() if b.preprocess_mode is not None)
EXPLICIT = sorted(n for n in KERAS_MODE if not REGISTRY[n].preprocess_in_base)
IN_BASE = sorted(n for n in KERAS_MODE if REGISTRY[n].preprocess_in_base)
# One per code path (B3 and V3-Large share their sibling's), to keep the file fast.
IN_BASE_KERAS_CTOR = {
    "efficientnet_b0": ("EfficientNetB0", {}),
    "efficientnetv2_b0": ("EfficientNetV2B0", {"include_preprocessing": True}),
    "mobilenet_v3_small": ("MobileNetV3Small", {"include_preprocessing": True}),
    "convnext_tiny": ("ConvNeXtTiny", {"include_preprocessing": True}),
}


def test_size(backbone) -> int:
    return max(64, backbone.min_input_size)


test_size.__test__ = False  # a helper, not a test


def pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random RGB 0..255 float32 images that include both extremes."""
    x = np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    x[:, 0, 0, :] = 0.0
    x[:, -1, -1, :] = 255.0
    return x


def features(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def assert_same(actual, expected, rtol: float = 1e-4) -> None:
    """Equal up to float rounding, relative to the vector's size (random-init features can be ~1e-10)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    assert np.linalg.norm(expected) > 0
    assert np.linalg.norm(actual - expected) <= rtol * np.linalg.norm(expected)


def differs(a, b, by: float = 0.1) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) > by * np.linalg.norm(a)


# --- registry ---------------------------------------------------------------------------------


def test_registry_has_the_documented_backbones_at_their_input_sizes():
    assert {n: REGISTRY[n].input_size for n in REQUIRED if n in REGISTRY} == REQUIRED
    assert REGISTRY["small_cnn"].pretrained is False
    assert all(REGISTRY[n].pretrained for n in REQUIRED if n != "small_cnn")


def test_unknown_backbone_raises_usage_error_listing_every_name():
    with pytest.raises(UsageError) as info:
        get_backbone("resnet9000")
    assert "resnet9000" in info.value.message
    for name in REGISTRY:
        assert name in info.value.hint


def test_get_backbone_returns_the_registered_entry():
    assert get_backbone("vgg16") is REGISTRY["vgg16"]


# --- preprocessing, without the heavy base ----------------------------------------------------


@pytest.mark.parametrize("name", EXPLICIT)
def test_preprocess_equals_keras_preprocess_input_on_0_255_pixels(name):
    bb = REGISTRY[name]
    x = pixels(2, 16, seed=1)
    ours = np.asarray(bb.preprocess(x))
    reference = bb.reference_preprocess(x.copy())
    np.testing.assert_array_equal(ours, reference)
    assert not np.allclose(ours, x)  # it really transforms the pixels


@pytest.mark.parametrize("name", IN_BASE)
def test_in_base_families_take_0_255_pixels_per_keras(name):
    # Keras' own preprocess_input is the identity for these: the model rescales 0..255 itself.
    # What the model then does to the pixels is checked on the built model below.
    x = pixels(1, 8, seed=2)
    np.testing.assert_array_equal(REGISTRY[name].reference_preprocess(x.copy()), x)


def test_preprocess_modes_are_keras_imagenet_utils_modes():
    from keras.applications import imagenet_utils

    x = pixels(2, 8, seed=3)
    for mode in ("tf", "caffe", "torch"):
        bb = next(b for b in REGISTRY.values() if b.preprocess_mode == mode)
        np.testing.assert_allclose(
            np.asarray(bb.preprocess(x)), imagenet_utils.preprocess_input(x.copy(), mode=mode), rtol=0, atol=2e-5
        )


# --- weights and sizes, no model built ---------------------------------------------------------


def test_resolve_weights_understands_imagenet_none_and_files(tmp_path):
    f = tmp_path / "w.weights.h5"
    f.write_bytes(b"x")
    assert resolve_weights("imagenet").kind == "imagenet"
    assert resolve_weights("ImageNet").kind == "imagenet"
    assert resolve_weights(None).kind == resolve_weights("none").kind == resolve_weights(" random ").kind == "none"
    assert resolve_weights(str(f)).path == f and str(resolve_weights(str(f))) == str(f)


def test_missing_weights_file_is_a_weights_error_with_hint(tmp_path):
    with pytest.raises(WeightsError) as info:
        REGISTRY["small_cnn"].builder(str(tmp_path / "nope.weights.h5"), 64)
    assert "nope.weights.h5" in info.value.message
    assert "--weights none" in info.value.hint


def test_small_cnn_has_no_imagenet_weights():
    with pytest.raises(UsageError) as info:
        REGISTRY["small_cnn"].builder("imagenet", 64)
    assert "--weights none" in info.value.hint
    # the default choice (not the user's) quietly means random weights for it
    assert resolve_weights("imagenet", REGISTRY["small_cnn"], explicit=False).kind == "none"


def test_image_below_the_minimum_size_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        REGISTRY["xception"].builder(None, 64)
    assert "71" in info.value.hint


# --- every registered backbone, built once with random weights ---------------------------------


ALL = sorted(REGISTRY)
# The graph is compared with Keras' own preprocess_input: families with a Keras mode and reference.
KERAS_RECIPE = sorted(n for n in KERAS_MODE if REGISTRY[n].reference_preprocess is not None)


@pytest.fixture(scope="module")
def built(request):
    """(backbone, model) built with random weights at a small size.

    Tests name the backbones they apply to (`indirect` parametrization); being module-scoped,
    pytest groups them per backbone, so each is built once and one at a time.
    """
    import keras

    bb = REGISTRY[request.param]
    model = bb.builder(None, test_size(bb))
    yield bb, model
    keras.backend.clear_session()


@pytest.mark.slow
@pytest.mark.parametrize("built", ALL, indirect=True)
def test_builds_to_pooled_float_features_with_a_backbone_submodel(built):
    bb, model = built
    size = test_size(bb)
    assert tuple(model.input.shape) == (None, size, size, 3)
    assert model.input.dtype == "float32"
    out = features(model, pixels(2, size))
    assert out.ndim == 2 and out.shape[0] == 2 and out.shape[1] >= 64
    assert out.dtype == np.float32 and np.isfinite(out).all()
    base = model.get_layer("backbone")
    assert len(base.layers) > max(bb.fine_tune_layers, 1)


@pytest.mark.slow
@pytest.mark.parametrize("built", ALL, indirect=True)
def test_0_1_pixels_give_clearly_different_features_than_0_255(built):
    bb, model = built
    x = pixels(2, test_size(bb), seed=4)
    assert differs(features(model, x), features(model, x / 255.0))


@pytest.mark.slow
@pytest.mark.parametrize("built", KERAS_RECIPE, indirect=True)
def test_features_equal_keras_recipe_pool_of_base_of_preprocess_input(built):
    """Our graph == base(keras preprocess_input(x)) on 0..255 pixels (the base pools itself).

    EfficientNet-Lite's (x - 127) / 128 is no Keras mode: test_efficientnet_lite.py checks it.
    """
    bb, model = built
    x = pixels(2, test_size(bb), seed=5)
    base = model.get_layer("backbone")
    expected = np.asarray(base(bb.reference_preprocess(x.copy()), training=False))
    assert_same(features(model, x), expected)


def _leading_preprocessing(base):
    """The sub-model from the base's input through its leading Rescaling/Normalization layers."""
    import keras

    last = None
    for layer in base.layers[1:]:
        if type(layer).__name__ not in ("Rescaling", "Normalization"):
            break
        last = layer
    assert last is not None, f"{base.name} has no preprocessing layers"
    return keras.Model(base.input, last.output)


@pytest.mark.slow
@pytest.mark.parametrize("built", IN_BASE, indirect=True)
def test_keras_base_maps_0_255_pixels_onto_its_imagenet_mode(built):
    """For in-base families: the layers inside the Keras model == imagenet_utils.preprocess_input(mode)."""
    from keras.applications import imagenet_utils

    bb, model = built
    x = pixels(2, test_size(bb), seed=6)
    seen = np.asarray(_leading_preprocessing(model.get_layer("backbone"))(x))
    reference = imagenet_utils.preprocess_input(x.copy(), mode=bb.preprocess_mode)
    np.testing.assert_allclose(seen, reference, rtol=0, atol=1e-4)
    np.testing.assert_allclose(seen, np.asarray(bb.preprocess(x)), rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("built", sorted(IN_BASE_KERAS_CTOR), indirect=True)
def test_in_base_model_equals_keras_application_with_its_preprocessing(built):
    """Same weights, fed the raw 0..255 image: our features == the stock Keras application's."""
    import keras

    bb, model = built
    ctor, kwargs = IN_BASE_KERAS_CTOR[bb.name]
    size = test_size(bb)
    stock = getattr(keras.applications, ctor)(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg", **kwargs
    )
    stock.set_weights(model.get_layer("backbone").get_weights())
    for layer in stock.layers:  # Normalization recomputes its mean/variance tensors only here
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()
    x = pixels(2, size, seed=7)
    assert_same(features(model, x), stock(x, training=False))


# --- weights files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet_files(tmp_path_factory):
    """A random MobileNetV3-Small model, its features, and its weights saved three ways.

    "legacy" is the HDF5 layout of Keras' downloadable `*_notop.h5` files, what a user offline
    would fetch by hand.
    """
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    bb = REGISTRY["mobilenet_v3_small"]
    model = bb.builder(None, 64)
    d = tmp_path_factory.mktemp("weights")
    whole, base_only, legacy = d / "whole.weights.h5", d / "base.weights.h5", d / "notop.h5"
    model.save_weights(whole)
    model.get_layer("backbone").save_weights(base_only)
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model.get_layer("backbone"))
    x = pixels(4, 64, seed=8)
    return {"x": x, "features": features(model, x), "whole": whole, "base": base_only, "legacy": legacy}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["whole", "base", "legacy"])
def test_weights_file_loads_into_the_model_or_its_backbone(mobilenet_files, kind):
    bb = REGISTRY["mobilenet_v3_small"]
    loaded, fresh = bb.builder(str(mobilenet_files[kind]), 64), bb.builder("none", 64)
    x = mobilenet_files["x"]
    assert_same(features(loaded, x), mobilenet_files["features"], rtol=1e-6)
    assert differs(features(fresh, x), mobilenet_files["features"])  # loading really changed the weights


@pytest.mark.slow
def test_small_cnn_weights_file_round_trip(tmp_path):
    bb = REGISTRY["small_cnn"]
    a = bb.builder(None, 64)
    path = tmp_path / "small.weights.h5"
    a.save_weights(path)
    x = pixels(2, 64, seed=9)
    assert_same(features(bb.builder(path, 64), x), features(a, x), rtol=1e-6)


@pytest.mark.slow
def test_weights_file_of_another_backbone_is_a_weights_error(mobilenet_files):
    with pytest.raises(WeightsError) as info:
        REGISTRY["small_cnn"].builder(mobilenet_files["whole"], 64)
    assert "small_cnn" in info.value.message
    assert "--weights none" in info.value.hint


@pytest.mark.slow
def test_fine_tuning_a_pretrained_backbone_keeps_batchnorm_statistics(mobilenet_files):
    """After unfreeze_top, training=True still uses BN's moving statistics (no batch statistics)."""
    bb = REGISTRY["mobilenet_v3_small"]
    model = bb.builder(mobilenet_files["whole"], 64)
    unfreeze_top(model, backbone=bb)
    x = mobilenet_files["x"]
    assert_same(model(x, training=True), mobilenet_files["features"], rtol=1e-5)
    for layer in model.get_layer("backbone").layers:  # everything open, BN included: batch statistics
        layer.trainable = True
    assert differs(model(x, training=True), mobilenet_files["features"])


@pytest.mark.slow
def test_efficientnet_weights_file_keeps_imagenet_normalization(tmp_path):
    """A file saved after ImageNet training stores std as "variance"; reloading must not change pixels."""
    from keras.applications import imagenet_utils

    bb = REGISTRY["efficientnet_b0"]
    a = bb.builder(None, 64)
    norm = next(layer for layer in a.get_layer("backbone").layers if type(layer).__name__ == "Normalization")
    norm.adapt_variance.assign(np.asarray(IMAGENET_STD_RGB, np.float32))  # what Keras' ImageNet file holds
    path = tmp_path / "b0.weights.h5"
    a.save_weights(path)
    b = bb.builder(path, 64)
    x = pixels(1, 64, seed=10)
    seen = np.asarray(_leading_preprocessing(b.get_layer("backbone"))(x))
    np.testing.assert_allclose(seen, imagenet_utils.preprocess_input(x.copy(), mode="torch"), atol=1e-4)


# --- ImageNet download, offline -------------------------------------------------------------------


def _keras_cache_has(fname: str) -> bool:
    homes = [os.environ.get("KERAS_HOME", ""), os.path.expanduser("~/.keras"), "/tmp/.keras"]
    return any(h and (Path(h) / "models" / fname).exists() for h in homes)


def test_offline_imagenet_download_is_a_weights_error_with_hint(monkeypatch):
    """No network (DNS fails, as on an offline machine) -> WeightsError naming the ways out."""
    if _keras_cache_has("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"):
        pytest.skip("MobileNetV3Small ImageNet weights are cached locally: nothing to download")

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # the network boundary, also with internet
    with pytest.raises(WeightsError) as info:
        REGISTRY["mobilenet_v3_small"].builder("imagenet", 224)
    assert "mobilenet_v3_small" in info.value.message
    for way_out in ("--weights none", "--weights PATH", "efficientnet_lite0"):
        assert way_out in info.value.hint


# --- fine-tuning ------------------------------------------------------------------------------


@pytest.mark.slow
def test_unfreeze_top_opens_only_the_last_layers_and_keeps_batchnorm_frozen():
    bb = REGISTRY["mobilenet_v3_small"]
    model = bb.builder(None, 64)
    freeze(model)
    assert model.trainable_weights == []
    n = unfreeze_top(model, backbone=bb)
    body = [layer for layer in model.get_layer("backbone").layers if type(layer).__name__ != "InputLayer"]
    trainable = [i for i, layer in enumerate(body) if layer.trainable]
    assert 0 < n == len(trainable) <= bb.fine_tune_layers
    assert min(trainable) >= len(body) - bb.fine_tune_layers
    assert not any(layer.trainable for layer in body if "BatchNormalization" in type(layer).__name__)
    assert model.trainable_weights


@pytest.mark.slow
def test_unfreeze_top_trains_a_from_scratch_backbone_whole():
    bb = REGISTRY["small_cnn"]
    model = bb.builder(None, 64)
    body = [layer for layer in model.get_layer("backbone").layers if type(layer).__name__ != "InputLayer"]
    assert unfreeze_top(model, backbone=bb) == len(body)
