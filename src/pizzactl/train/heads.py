"""The classifier head (dropout + dense) and the classifier it makes with a backbone.

Two classes: one sigmoid unit, P(classes[1]), binary cross-entropy (the pizza model, as it
always was). More: a softmax over the K classes and categorical cross-entropy on one-hot
targets. `targets`, `compile_args` and `as_probabilities` are the only places that differ.

On cached features a head trains in milliseconds per epoch, so it is trained several times
with different seeds and the heads averaged (`fit_heads`): the head is linear, so the average
of n heads is one head, with about 1/n of one run's seed variance.
"""

from __future__ import annotations

from pizzactl.train.metrics import THRESHOLD, loss_and_accuracy
from pizzactl.train.run_log import epoch_logger


def build_head(dim: int, dropout: float, n_classes: int = 2):
    """features [N, dim] -> dropout -> dense: sigmoid [N, 1] P(classes[1]), or softmax [N, K]."""
    import keras

    binary = n_classes <= 2
    return keras.Sequential(
        [
            keras.Input((dim,), name="features"),
            keras.layers.Dropout(dropout, name="dropout"),
            keras.layers.Dense(
                1 if binary else n_classes, activation="sigmoid" if binary else "softmax", name="probability"
            ),
        ],
        name="head",
    )


def targets(labels, n_classes: int):
    """Class indices -> what the head trains on: float [N] for two classes, one-hot [N, K] for more."""
    import numpy as np

    labels = np.asarray(labels, np.int64).ravel()
    if n_classes <= 2:
        return labels.astype(np.float32)
    return np.eye(n_classes, dtype=np.float32)[labels]


def compile_args(n_classes: int, label_smoothing: float = 0.0) -> dict:
    """`loss` and `metrics` for `model.compile`: binary or categorical cross-entropy, and accuracy."""
    import keras

    if n_classes <= 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    return {"loss": loss, "metrics": [accuracy]}


def as_probabilities(p):
    """A model's output as numpy: [N] P(classes[1]) from a sigmoid [N, 1], [N, K] from a softmax."""
    import numpy as np

    p = np.asarray(p)
    return p.reshape(-1) if p.ndim <= 1 or p.shape[-1] == 1 else p


def build_classifier(extractor, head, image_size: int, tta: bool = True):
    """float32 [N,S,S,3] 0..255 -> the head's probabilities; with `tta`, the mean over the image and its mirror."""
    import keras

    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    p = head(extractor(pixels))
    if tta:
        mirrored = head(extractor(keras.ops.flip(pixels, axis=2)))
        p = keras.layers.Average(name="flip_average")([p, mirrored])
    return keras.Model(pixels, p, name="classifier")


def head_probabilities(head, x):
    """A head's probabilities on features [N, D] in numpy (`as_probabilities`' shapes): at
    inference the head is `sigmoid(x @ W + b)` or its softmax (dropout is off), so no
    TensorFlow graph is traced for it."""
    import numpy as np

    kernel, bias = head.get_layer("probability").get_weights()
    z = np.asarray(x, np.float64) @ kernel.astype(np.float64) + bias
    if z.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-z.ravel()))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def head_validation(x_val, y_val):
    """A callback that scores the head on validation features in numpy, adding val_loss/val_accuracy.

    The head is dropout + dense, so at inference it is `sigmoid(x @ W + b)` (or the softmax of
    it): no second TensorFlow graph to trace (which costs more than all the head's epochs together).
    """
    import keras
    import numpy as np

    x_val = np.asarray(x_val, np.float64)

    class HeadValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            p = head_probabilities(self.model, x_val)
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
    """Train dropout + dense on cached features; early stopping restores the best epoch.

    `y_train` are `targets` (float [N] or one-hot [N, K]); their shape says how many classes.
    """
    import keras
    import tensorflow as tf

    x = tf.convert_to_tensor(x_train, tf.float32)  # no copy when it is a float32 tensor already
    y = tf.convert_to_tensor(y_train, tf.float32)
    n = int(x.shape[0])
    n_classes = int(y.shape[1]) if len(y.shape) == 2 else 2
    head = build_head(int(x.shape[1]), dropout, n_classes)
    steps = -(-n // batch_size)
    head.compile(optimizer=keras.optimizers.Adam(lr), steps_per_execution=steps, **compile_args(n_classes))
    # shuffle row numbers, not rows: a shuffle buffer of rows would hold a second copy of them all
    data = (
        tf.data.Dataset.range(n)
        .shuffle(n, seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda i: (tf.gather(x, i), tf.gather(y, i)))
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
    import tensorflow as tf

    x_train = tf.convert_to_tensor(x_train, tf.float32)  # once, shared by every head
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
