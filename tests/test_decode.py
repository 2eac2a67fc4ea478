"""The model server's LiteRT decode gives the very pixels of training's `decode_resize`.

`runtimes.decoder` skips the resize of an image that already has the model's size (most of what
the gateway sends); these tests pin that the shortcut changes no pixel, on every shape around it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pizzactl.serving.prepare import prepare_image

from support.photos import encode, photo_like_jpeg

SIZE = 48


def decode_both(blobs: list[bytes], size: int = SIZE):
    import tensorflow as tf

    from pizzactl.model.decode import decode_resize
    from pizzactl.model.runtimes import decoder

    fast = decoder(size)(tf.constant(blobs, dtype=tf.string)).numpy()
    plain = np.stack([decode_resize(tf.constant(b), size).numpy() for b in blobs])
    return fast, plain


def photo(width: int, height: int, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels).convert(mode), fmt)


@pytest.mark.parametrize(
    "width, height, fmt, mode",
    [
        (SIZE, SIZE, "JPEG", "RGB"),  # the shortcut
        (SIZE, SIZE, "PNG", "RGB"),
        (SIZE, SIZE, "JPEG", "L"),  # grey: decoded to 3 equal channels either way
        (SIZE, SIZE - 1, "JPEG", "RGB"),  # one side short: resized
        (SIZE + 1, SIZE, "PNG", "RGB"),
        (3 * SIZE, 2 * SIZE, "JPEG", "RGB"),
        (SIZE // 2, SIZE // 3, "GIF", "RGB"),
    ],
)
def test_litert_decode_equals_training_decode_bit_for_bit(width, height, fmt, mode):
    fast, plain = decode_both([photo(width, height, fmt, mode)])
    assert fast.dtype == plain.dtype == np.float32
    assert np.array_equal(fast, plain)


def test_a_batch_mixing_model_size_and_other_sizes_keeps_each_images_pixels():
    blobs = [photo(SIZE, SIZE, seed=1), photo(80, 60, seed=2), photo(SIZE, SIZE, "PNG", seed=3)]
    fast, plain = decode_both(blobs)
    assert np.array_equal(fast, plain)


def test_photos_as_the_gateway_sends_them_decode_to_training_pixels(shared_photos):
    raw = [p.read_bytes() for p in shared_photos["pizza"][:3] + shared_photos["not_pizza"][:3]]
    raw.append(photo_like_jpeg(640, 480))
    fast, plain = decode_both([prepare_image(b, 224) for b in raw], 224)
    assert np.array_equal(fast, plain)
