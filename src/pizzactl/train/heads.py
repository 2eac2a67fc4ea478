"""The classifier head (dropout + dense) and the classifier it makes with a backbone.

On cached features a head trains in milliseconds per epoch, so it is trained several times
with different seeds and the heads averaged (`fit_heads`): the head is linear, so the average
of n heads is one head, with about 1/n of one run's seed variance.
"""

from __future__ import annotations

from pizzactl.train.metrics import THRESHOLD, loss_and_accuracy
from pizzactl.train.run_log import epoch_logger


def build_head(dim: int, dropout: float):
    """features [N, dim] -> dropout -> dense sigmoid -> [N, 1] P(positive class)."""
    import keras

    return keras.Sequential(
        [
            keras.Input((dim,), name="features"),
            keras.layers.Dropout(dropout, name="dropout"),
            keras.layers.Dense(1, activation="sigmoid", name="probability"),
        ],
        name="head",
    )


def build_classifier(extractor, head, image_size: int, tta: bool = True):
    """float32 [N,S,S,3] 0..255 -> [N,1] P(positive); with `tta`, the mean over the image and its mirror."""
    import keras

    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    p = head(extractor(pixels))
    if tta:
        mirrored = head(extractor(keras.ops.flip(pixels, axis=2)))
        p = keras.layers.Average(name="flip_average")([p, mirrored])
    return keras.Model(pixels, p, name="classifier")


def head_validation(x_val, y_val):
    """A callback that scores the head on validation features in numpy, adding val_loss/val_accuracy.

    The head is dropout + dense sigmoid, so at inference it is `sigmoid(x @ W + b)`: no second
    TensorFlow graph to trace (which costs more than all the head's epochs together).
    """
    import keras
    import numpy as np

    x_val = np.asarray(x_val, np.float64)
    y_val = np.asarray(y_val, np.float64).ravel()

    class HeadValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernel, bias = self.model.get_layer("probability").get_weights()
            p = 1.0 / (1.0 + np.exp(-(x_val @ kernel.astype(np.float64) + bias).ravel()))
            if logs is not None:
                logs["val_loss"], logs["val_accuracy"] = loss_and_accuracy(y_val, p, THRESHOLD)

    return HeadValidation()


def fit_head(
    x_train,
    y_train,
    x_val,
    y_val,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    dropout: float,
    patience: int,
    callbacks=(),
    seed: int = 42,
):
    """Train dropout + dense sigmoid on cached features; early stopping restores the best epoch."""
    import keras
    import tensorflow as tf

    head = build_head(int(x_train.shape[1]), dropout)
    steps = -(-len(x_train) // batch_size)
    head.compile(
        optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", metrics=["accuracy"], steps_per_execution=steps
    )
    data = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    head.fit(data, epochs=epochs, verbose=0, shuffle=False, callbacks=[head_validation(x_val, y_val), stop, *callbacks])
    return head, stop


def fit_heads(
    x_train,
    y_train,
    x_val,
    y_val,
    *,
    n: int,
    epochs: int,
    batch_size: int,
    lr: float,
    dropout: float,
    patience: int,
    seed: int,
    runlog,
    rows: list,
):
    """`fit_head` with `n` seeds, weights averaged into one head.

    The head is linear, so the average of n heads is one head; it has the variance of one
    Adam + dropout + early-stopping run divided by about n. history.csv keeps the first head's
    epochs.
    """
    import keras
    import numpy as np

    heads = []
    for i in range(max(1, n)):
        keras.utils.set_random_seed(seed + i)  # each head reproducible on its own (dropout, init)
        callbacks = [epoch_logger("head", epochs, runlog, rows)] if i == 0 else []
        head, stop = fit_head(
            x_train,
            y_train,
            x_val,
            y_val,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            dropout=dropout,
            patience=patience,
            callbacks=callbacks,
            seed=seed + i,
        )
        heads.append((head, stop.best_epoch + 1))
    if len(heads) > 1:
        layers = [h.get_layer("probability") for h, _ in heads]
        kernels, biases = zip(*(layer.get_weights() for layer in layers), strict=False)
        layers[0].set_weights([np.mean(kernels, axis=0), np.mean(biases, axis=0)])
        runlog(
            f"Averaged {len(heads)} heads (seeds {seed}..{seed + len(heads) - 1}, best epochs {[e for _, e in heads]})"
        )
    return heads[0][0]
