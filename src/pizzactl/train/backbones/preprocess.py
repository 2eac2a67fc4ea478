"""Preprocessing inside the graph: 0..255 RGB pixels -> what a backbone's first layer expects.

`preprocess_mode` names the modes of `keras.applications.imagenet_utils.preprocess_input`:
"tf" = x/127.5-1, "caffe" = BGR minus the ImageNet mean, "torch" = (x/255-mean)/std. Nothing
outside the backbones ever rescales pixels, which makes feeding 0-1 pixels to a network that
expects 0-255 impossible by construction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # torch mode, on 0..1 pixels
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # caffe mode, on 0..255 BGR pixels
PREPROCESS_MODES = ("tf", "caffe", "torch")


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
def pixel_preprocess_layer():
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
    cls = pixel_preprocess_layer()
    return {"pizzactl>PixelPreprocess": cls, "PixelPreprocess": cls}


def keras_reference(module: str | None) -> Callable:
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
