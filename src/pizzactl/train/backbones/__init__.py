"""Backbones: feature extractors that each know their input size and their own preprocessing.

Every feature extractor built here takes float32 RGB pixels in 0..255, shape [N, S, S, 3],
and applies the backbone's own preprocessing *inside the graph* (`preprocess`), so serving
and training can never disagree about pixel scales. The model a builder returns always has
this shape::

    pixels  float32 [N, S, S, 3], RGB 0..255          (keras.Input, name "pixels")
      -> preprocess                                     (layer "preprocess"; absent when the
                                                         Keras application preprocesses itself)
      -> backbone  float32 [N, D]                       (sub-model "backbone", pooled: the
                                                         model's output)

`model.get_layer("backbone")` is what a trainer freezes for the head epochs and partly
unfreezes for fine-tuning (`top`). Modules: `registry` (the entries), `weights` (what
`--weights` means, loading files), `preprocess` (in-graph pixel scaling), one module per
family (`keras_applications`, `small_cnn`, `efficientnet_lite`), `torch_weights` (reading
`.pth` without torch). Importing this package registers every family.
"""

from pizzactl.train.backbones import efficientnet_lite, keras_applications, small_cnn
from pizzactl.train.backbones.preprocess import custom_objects
from pizzactl.train.backbones.registry import REGISTRY, Backbone, get_backbone, register
from pizzactl.train.backbones.top import freeze, split_at, unfreeze_top
from pizzactl.train.backbones.weights import Weights, resolve_weights

__all__ = [
    "REGISTRY",
    "Backbone",
    "Weights",
    "custom_objects",
    "efficientnet_lite",
    "freeze",
    "get_backbone",
    "keras_applications",
    "register",
    "resolve_weights",
    "small_cnn",
    "split_at",
    "unfreeze_top",
]
