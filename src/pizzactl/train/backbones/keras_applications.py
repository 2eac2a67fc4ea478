"""Backbones from `keras.applications`: ImageNet weights downloaded by Keras (or a file given).

Each is built with `include_top=False, pooling="avg"`: the pooling is the application's own,
which matters for ConvNeXt, whose final LayerNorm then normalizes the pooled vector as in its
ImageNet head. Families whose Keras model preprocesses 0..255 pixels itself
(`preprocess_in_base`) get no "preprocess" layer of ours.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pizzactl.train.backbones.preprocess import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    keras_reference,
    pixel_preprocess_layer,
)
from pizzactl.train.backbones.registry import REGISTRY, Backbone, check_size, register
from pizzactl.train.backbones.weights import is_download_failure, load_weights_file, offline_error, resolve_weights


@dataclass(frozen=True)
class _KerasApp:
    name: str
    constructor: str  # keras.applications.<constructor>
    preprocess_mode: str
    preprocess_in_base: bool  # the constructor preprocesses itself (always, or include_preprocessing)
    has_include_preprocessing_flag: bool = False
    efficientnet_v1: bool = False


def _build_keras_app(app: _KerasApp, weights="imagenet", image_size: int | None = None):
    import keras

    bb = REGISTRY[app.name]
    size = check_size(app.name, image_size, bb.input_size, bb.min_input_size)
    source = resolve_weights(weights, bb)
    kwargs = dict(
        include_top=False,
        weights="imagenet" if source.kind == "imagenet" else None,
        input_shape=(size, size, 3),
        pooling="avg",
    )
    if app.has_include_preprocessing_flag:
        kwargs["include_preprocessing"] = True
    try:
        base = getattr(keras.applications, app.constructor)(**kwargs)
    except Exception as exc:
        if source.kind == "imagenet" and is_download_failure(exc):
            raise offline_error(app.name, exc) from exc
        raise
    # Renamed after construction: EfficientNetV2 and ConvNeXt read their architecture (and which
    # ImageNet file to fetch) from the `name` argument.
    base.name = "backbone"

    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = inputs
    if not app.preprocess_in_base:
        x = pixel_preprocess_layer()(app.preprocess_mode, name="preprocess")(x)
    features = base(x)
    model = keras.Model(inputs, features, name=f"{app.name}_features")
    if source.path is not None:
        load_weights_file(model, base, source.path, app.name)
    if app.efficientnet_v1 and source.kind != "imagenet":
        _fix_efficientnet_normalization(base)
    return model


def _fix_efficientnet_normalization(base) -> None:
    """Make EfficientNet-B*'s in-model normalization (x/255 - mean) / std whatever the weights.

    Keras builds EfficientNet's stem as Rescaling(1/255) -> Normalization, and only for
    weights="imagenet" appends Rescaling(1/sqrt(std)) because its ImageNet file stores std as the
    "variance" (keras issue tensorflow/tensorflow#49930). Built with weights=None (random init, or
    a weights file loaded afterwards) that extra layer is missing, so the Normalization must hold
    the true variance std**2, or a model saved after ImageNet training would silently see
    differently scaled pixels when reloaded.
    """
    import numpy as np

    norm = next(layer for layer in base.layers if type(layer).__name__ == "Normalization")
    norm.adapt_mean.assign(np.asarray(IMAGENET_MEAN_RGB, np.float32))
    norm.adapt_variance.assign(np.square(np.asarray(IMAGENET_STD_RGB, np.float32)))
    norm.finalize_state()


def _register_keras_app(
    name: str,
    constructor: str,
    input_size: int,
    mode: str,
    *,
    reference_module: str | None,
    in_base: bool,
    flag: bool = False,
    fine_tune_layers: int,
    min_input_size: int = 32,
    description: str,
    efficientnet_v1: bool = False,
) -> Backbone:
    app = _KerasApp(name, constructor, mode, in_base, flag, efficientnet_v1)
    return register(
        Backbone(
            name=name,
            input_size=input_size,
            pretrained=True,
            builder=functools.partial(_build_keras_app, app),
            reference_preprocess=keras_reference(None if in_base else reference_module),
            description=description,
            preprocess_mode=mode,
            preprocess_in_base=in_base,
            fine_tune_layers=fine_tune_layers,
            min_input_size=min_input_size,
        )
    )


_register_keras_app(
    "xception",
    "Xception",
    299,
    "tf",
    reference_module="xception",
    in_base=False,
    fine_tune_layers=17,
    min_input_size=71,  # block13 and block14 (the exit flow)
    description="Xception (20.9M params, 2048-d); tf preprocessing x/127.5-1 in graph",
)
_register_keras_app(
    "inception_v3",
    "InceptionV3",
    299,
    "tf",
    reference_module="inception_v3",
    in_base=False,
    fine_tune_layers=63,
    min_input_size=75,  # the last two inception blocks (mixed9, mixed10)
    description="Inception-v3 (21.8M params, 2048-d); tf preprocessing x/127.5-1 in graph",
)
_register_keras_app(
    "vgg16",
    "VGG16",
    224,
    "caffe",
    reference_module="vgg16",
    in_base=False,
    fine_tune_layers=5,  # block5: 3 convs + pool
    description="VGG16 (14.7M params, 512-d); caffe preprocessing (BGR, minus ImageNet mean) in graph",
)
_register_keras_app(
    "resnet50",
    "ResNet50",
    224,
    "caffe",
    reference_module="resnet50",
    in_base=False,
    fine_tune_layers=33,  # the conv5 stage (3 bottleneck blocks)
    description="ResNet-50 (23.6M params, 2048-d); caffe preprocessing (BGR, minus ImageNet mean) in graph",
)
_register_keras_app(
    "efficientnet_b0",
    "EfficientNetB0",
    224,
    "torch",
    reference_module="efficientnet",
    in_base=True,
    fine_tune_layers=32,
    efficientnet_v1=True,  # block6d, block7a and the top conv
    description="EfficientNet-B0 (4.0M params, 1280-d); Keras model normalizes 0..255 itself",
)
_register_keras_app(
    "efficientnet_b3",
    "EfficientNetB3",
    300,
    "torch",
    reference_module="efficientnet",
    in_base=True,
    fine_tune_layers=32,
    efficientnet_v1=True,  # block7a, block7b and the top conv
    description="EfficientNet-B3 (10.8M params, 1536-d); Keras model normalizes 0..255 itself",
)
_register_keras_app(
    "efficientnetv2_b0",
    "EfficientNetV2B0",
    224,
    "torch",
    reference_module="efficientnet_v2",
    in_base=True,
    flag=True,
    fine_tune_layers=34,  # block6g, block6h and the top conv
    description="EfficientNetV2-B0 (5.9M params, 1280-d); include_preprocessing=True",
)
_register_keras_app(
    "mobilenet_v3_small",
    "MobileNetV3Small",
    224,
    "tf",
    reference_module="mobilenet_v3",
    in_base=True,
    flag=True,
    fine_tune_layers=19,  # the last inverted-residual block and conv_1
    description="MobileNetV3-Small (0.9M params, 576-d); include_preprocessing=True (x/127.5-1)",
)
_register_keras_app(
    "mobilenet_v3_large",
    "MobileNetV3Large",
    224,
    "tf",
    reference_module="mobilenet_v3",
    in_base=True,
    flag=True,
    fine_tune_layers=19,  # the last inverted-residual block and conv_1
    description="MobileNetV3-Large (3.0M params, 960-d); include_preprocessing=True (x/127.5-1)",
)
_register_keras_app(
    "convnext_tiny",
    "ConvNeXtTiny",
    224,
    "torch",
    reference_module="convnext",
    in_base=True,
    flag=True,
    fine_tune_layers=24,  # the last downsampling, stage 3's 3 blocks, the final LayerNorm
    description="ConvNeXt-Tiny (27.8M params, 768-d); include_preprocessing=True",
)
