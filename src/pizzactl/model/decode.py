"""The one image decode that training, export and evaluation share, so all three see the same pixels.

`decode_resize` is what the exported `serving_default` signature runs in its graph; the
trainer and the feature cache call the very same function on the raw file bytes.
`decode_resize_fast` is what the LiteRT model server runs instead: the same pixels, bit for bit,
without the resize when the image already has the model's size (the gateway sends most photos
so, and resizing S x S to S x S with antialias is the identity but cost 55% of the decode).
"""

from __future__ import annotations


def decode(image_bytes):
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar tf.string) -> uint8 [H, W, 3]."""
    import tensorflow as tf

    return tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)


def resize(image, size: int):
    """uint8 [H, W, 3] -> float32 [size, size, 3], values 0..255 (bilinear with antialias)."""
    import tensorflow as tf

    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def decode_resize(image_bytes, size: int):
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar tf.string) -> float32 [size, size, 3], values 0..255."""
    return resize(decode(image_bytes), size)


def decode_resize_fast(image_bytes, size: int):
    """`decode_resize`'s pixels, skipping the resize of an image that is already size x size.

    At scale 1 the antialiased bilinear kernel (radius 1) weighs only the pixel itself, with
    weight 1, so the resize returns its input converted to float32 exactly (tests/test_decode.py).
    """
    import tensorflow as tf

    image = decode(image_bytes)
    shape = tf.shape(image)
    square = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    return tf.cond(square, lambda: tf.cast(image, tf.float32), lambda: resize(image, size))
