"""The one image decode that training, export and evaluation share, so all three see the same pixels.

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
