"""The backbone registry: each entry knows its input size and its own preprocessing.

Every feature extractor built here takes float32 RGB pixels in 0..255, shape [N, S, S, 3],
and applies the backbone's own preprocessing *inside the graph*. Nothing outside this module
ever rescales pixels, which makes the seed project's bug (0-1 pixels into a network that
expects 0-255, accuracy 0.50) impossible by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pizzactl.errors import UsageError


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    pretrained: bool  # True when ImageNet weights exist for it
    # (weights: "imagenet" | None | path, image_size) -> keras.Model: 0..255 pixels -> pooled features [N, D]
    builder: Callable
    # Keras' own preprocess_input for this family (tests compare the in-graph one against it)
    reference_preprocess: Callable | None = None
    description: str = ""


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
