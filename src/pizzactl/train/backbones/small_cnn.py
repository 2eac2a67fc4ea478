"""small_cnn: a compact network trained from scratch, for when no pretrained weights will do."""

from __future__ import annotations

from pizzactl.train.backbones.preprocess import keras_reference, pixel_preprocess_layer
from pizzactl.train.backbones.registry import REGISTRY, Backbone, check_size, register
from pizzactl.train.backbones.weights import load_weights_file, resolve_weights

SMALL_CNN_WIDTHS = (64, 128, 256)
SMALL_CNN_TOP = 384


def _build_small_cnn(weights=None, image_size: int | None = None):
    """A compact residual separable-conv net (Xception-style) for ~1.5k photos, from scratch.

    stem: two conv-BN-ReLU (32, 64; the first strided) -> 3 residual stages of two
    SeparableConv-BN-ReLU with max-pool and a strided 1x1 shortcut (64, 128, 256) ->
    SeparableConv(384)-BN-ReLU -> global average pool. About 0.3M parameters: small enough not to memorize 1.5k images.
    """
    import keras
    from keras import layers

    bb = REGISTRY["small_cnn"]
    size = check_size("small_cnn", image_size, bb.input_size, bb.min_input_size)
    source = resolve_weights(weights, bb)

    base_in = keras.Input((size, size, 3), name="backbone_input")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv1")(base_in)
    x = layers.BatchNormalization(name="stem_bn1")(x)
    x = layers.ReLU(name="stem_relu1")(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="stem_conv2")(x)
    x = layers.BatchNormalization(name="stem_bn2")(x)
    x = layers.ReLU(name="stem_relu2")(x)
    for i, width in enumerate(SMALL_CNN_WIDTHS, start=1):
        shortcut = layers.Conv2D(width, 1, strides=2, padding="same", use_bias=False, name=f"stage{i}_shortcut")(x)
        shortcut = layers.BatchNormalization(name=f"stage{i}_shortcut_bn")(shortcut)
        for j in (1, 2):
            x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=f"stage{i}_sep{j}")(x)
            x = layers.BatchNormalization(name=f"stage{i}_bn{j}")(x)
            x = layers.ReLU(name=f"stage{i}_relu{j}")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"stage{i}_pool")(x)
        x = layers.Add(name=f"stage{i}_add")([x, shortcut])
    x = layers.SeparableConv2D(SMALL_CNN_TOP, 3, padding="same", use_bias=False, name="top_sep")(x)
    x = layers.BatchNormalization(name="top_bn")(x)
    x = layers.ReLU(name="top_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    base = keras.Model(base_in, x, name="backbone")

    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = pixel_preprocess_layer()("tf", name="preprocess")(inputs)
    features = base(x)
    model = keras.Model(inputs, features, name="small_cnn_features")
    if source.path is not None:
        load_weights_file(model, base, source.path, "small_cnn")
    return model


register(
    Backbone(
        name="small_cnn",
        input_size=128,
        pretrained=False,
        builder=_build_small_cnn,
        reference_preprocess=keras_reference("xception"),  # the same tf mode: x/127.5 - 1
        description="Compact residual separable-conv net (0.3M params, 384-d), trained from scratch; x/127.5-1 in graph",
        preprocess_mode="tf",
        fine_tune_layers=0,
        min_input_size=32,
    )
)
