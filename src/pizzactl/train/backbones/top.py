"""The top of a backbone: what fine-tuning unfreezes, and where the cached-map path cuts it.

Keep BatchNormalization layers frozen when fine-tuning pretrained weights (`unfreeze_top`
does): Keras 3 runs a BatchNormalization layer in inference mode exactly when
`trainable=False`. Calling the base with `training=False` would NOT do it: a Keras 3
functional model passes its own `training` flag down to nested models, overriding the
recorded one.
"""

from __future__ import annotations

from pizzactl.train.backbones.registry import Backbone


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
