"""The backbone registry: what each feature extractor is called, what it takes, how it is built.

Entries are registered by the modules that define them (keras_applications, small_cnn,
efficientnet_lite); importing `pizzactl.train.backbones` imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pizzactl.errors import UsageError
from pizzactl.train.backbones.preprocess import preprocess_pixels


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    pretrained: bool  # True when ImageNet weights exist for it
    # (weights: "imagenet" | None | "none" | path, image_size=None) -> keras.Model:
    # 0..255 pixels -> pooled features [N, D] (see the package docstring for its layers)
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
        """`builder(weights, image_size)`, with anything Keras prints (download progress) sent to
        stderr, where it cannot break `--json` output on stdout."""
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):
            return self.builder(weights, image_size)

    def resized(self, model, image_size: int):
        """The same feature model (same weights) for `image_size` px input.

        Every backbone here is fully convolutional with global pooling, so weights trained at
        one size run at another: training can use a smaller size than serving (FixRes).
        """
        other = self.build("none", image_size)
        other.set_weights(model.get_weights())
        return other


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


def check_size(name: str, image_size: int | None, default: int, minimum: int) -> int:
    """The input size to build at: `image_size` or the backbone's `default`, never below `minimum`."""
    size = int(image_size or default)
    if size < minimum:
        raise UsageError(
            f"{name} needs an input of at least {minimum}x{minimum} pixels (got {size}).",
            hint=f"Use --image-size {minimum} or more (its default is {default}).",
        )
    return size
