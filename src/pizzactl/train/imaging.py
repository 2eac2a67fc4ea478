"""Image decoding shared by training, export and evaluation, so all three see the same pixels.

`decode_resize` is what the exported `serving_default` signature runs in its graph; the
trainer and the feature cache call the very same function on the raw file bytes.
"""

from __future__ import annotations


def decode_resize(image_bytes, size: int):
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar tf.string) -> float32 [size, size, 3], values 0..255."""
    import tensorflow as tf

    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def resize_pixels(pixels, size: int):
    """uint8 pixels [H, W, 3] (or a batch) -> float32 [size, size, 3] 0..255, as `decode_resize` does."""
    import tensorflow as tf

    image = tf.image.resize(tf.cast(pixels, tf.float32), [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)
