"""Pillow checks every image before the model: limits, formats, modes, orientation, wire size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pizzactl.errors import InvalidImageError, PayloadTooLargeError, UnsupportedMediaError
from pizzactl.serving.prepare import WIRE_BUDGET, ImageLimits, encode_for_model, load_image, prepare_image

from support.photos import encode, photo_like_jpeg, png_header_only


def test_a_real_photo_is_shrunk_to_the_model_size_and_fits_the_wire_budget(shared_photos):
    raw = shared_photos["pizza"][0].read_bytes()
    jpeg = prepare_image(raw, 224)
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG"
        assert max(im.size) <= 224
    assert len(jpeg) <= WIRE_BUDGET


def test_a_huge_noisy_photo_still_fits_the_wire_budget_even_for_a_large_model_input():
    noise = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    raw = encode(Image.fromarray(noise), "JPEG", quality=85)
    assert len(raw) > 1_000_000
    jpeg = prepare_image(raw, 512)
    assert len(jpeg) <= WIRE_BUDGET


def test_each_side_is_capped_separately_as_the_model_squashes_to_a_square():
    wide = Image.new("RGB", (1000, 100), (200, 50, 50))
    with Image.open(io.BytesIO(encode_for_model(wide, 224))) as im:
        assert im.size == (224, 100)  # the short side is left alone: the model would upsample it anyway
    small = Image.new("RGB", (50, 40), (200, 50, 50))
    with Image.open(io.BytesIO(encode_for_model(small, 224))) as im:
        assert im.size == (50, 40)  # never upscaled


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)


@pytest.mark.parametrize(
    "image, fmt, expected",
    [
        (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent -> white
        (Image.new("RGBA", (8, 8), (255, 0, 0, 255)), "PNG", (255, 0, 0)),
        (Image.new("LA", (8, 8), (0, 0)), "PNG", (255, 255, 255)),
        (Image.new("L", (8, 8), 100), "PNG", (100, 100, 100)),
        (Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
        (Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), "PNG", (255, 255, 255)),  # I;16 -> 8 bit
        (Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)), "TIFF", (128, 128, 128)),
        (Image.new("1", (8, 8), 1), "BMP", (255, 255, 255)),
    ],
    ids=["rgba-transparent", "rgba-opaque", "la", "l", "cmyk", "i16-png", "i16-tiff", "1-bit"],
)
def test_every_mode_becomes_rgb(image, fmt, expected):
    loaded = load_image(encode(image, fmt))
    assert loaded.mode == "RGB"
    assert all(abs(a - b) <= 3 for a, b in zip(loaded.getpixel((4, 4)), expected, strict=False))


def test_palette_image_with_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    loaded = load_image(encode(image, "PNG", transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    gif = load_image(encode(Image.new("P", (8, 8), 1).copy(), "GIF"))
    assert gif.mode == "RGB"


def test_truncated_image_is_invalid_422():
    raw = photo_like_jpeg()
    with pytest.raises(InvalidImageError) as info:
        load_image(raw[: len(raw) // 2])
    assert info.value.http_status == 422


def test_draft_decodes_a_jpeg_at_reduced_scale_but_never_below_the_model_size():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 1000, 3), dtype=np.uint8))
    data = encode(image, "JPEG", quality=90)
    assert load_image(data).size == (1000, 600)
    assert load_image(data, draft_size=224).size == (500, 300)  # 1/2: 1/4 would make 150 < 224
    assert load_image(data, draft_size=100).size == (250, 150)
    assert min(load_image(data, draft_size=300).size) >= 300


def test_truncated_jpeg_is_invalid_even_when_decoded_at_reduced_scale():
    raw = photo_like_jpeg()
    with pytest.raises(InvalidImageError):
        load_image(raw[: len(raw) // 2], draft_size=64)


def test_empty_data_is_invalid():
    with pytest.raises(InvalidImageError):
        load_image(b"")


def test_bytes_that_are_not_an_image_are_unsupported_415():
    with pytest.raises(UnsupportedMediaError) as info:
        load_image(b"%PDF-1.4 this is a document, not a photo" * 10)
    assert info.value.http_status == 415


def test_an_image_format_we_do_not_accept_is_415():
    with pytest.raises(UnsupportedMediaError) as info:
        load_image(encode(Image.new("RGB", (8, 8)), "PPM"))
    assert "PPM" in info.value.message


def test_too_many_bytes_is_413():
    with pytest.raises(PayloadTooLargeError) as info:
        load_image(encode(Image.effect_noise((64, 64), 64), "PNG"), ImageLimits(max_bytes=1000))
    assert info.value.http_status == 413


def test_too_many_pixels_is_413_before_decoding():
    with pytest.raises(PayloadTooLargeError):
        load_image(encode(Image.new("RGB", (100, 100)), "PNG"), ImageLimits(max_pixels=5_000))


def test_decompression_bomb_header_is_413():
    with pytest.raises(PayloadTooLargeError):
        load_image(png_header_only(100_000, 100_000))


def small_photo(width: int = 200, height: int = 150, mode: str = "RGB", quality: int = 80, **save) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels).convert(mode), "JPEG", quality=quality, **save)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_an_upright_jpeg_within_the_model_size_goes_to_the_model_server_as_uploaded(mode):
    raw = small_photo(224, 150, mode)  # the model server decodes it as training decodes the file
    assert prepare_image(raw, 224) == raw


@pytest.mark.parametrize(
    "raw, why",
    [
        (small_photo(225, 150), "a side larger than the model's"),
        (small_photo(mode="CMYK"), "CMYK"),
        (encode(Image.new("RGB", (64, 64), (200, 50, 50)), "PNG"), "not a JPEG"),
    ],
    ids=["too-large", "cmyk", "png"],
)
def test_other_uploads_are_re_encoded_as_rgb_jpeg(raw, why):
    jpeg = prepare_image(raw, 224)
    assert jpeg != raw, why
    with Image.open(io.BytesIO(jpeg)) as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")
        assert max(im.size) <= 224


def test_a_small_jpeg_with_exif_orientation_is_re_encoded_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    raw = small_photo(120, 80, exif=exif.tobytes())
    with Image.open(io.BytesIO(prepare_image(raw, 224))) as im:
        assert im.size == (80, 120)  # the model server does not read EXIF: the gateway turns it


def test_a_small_jpeg_over_the_wire_budget_is_re_encoded_within_it():
    raw = small_photo(224, 224, quality=100)
    assert len(raw) > WIRE_BUDGET
    assert len(prepare_image(raw, 224)) <= WIRE_BUDGET


def test_a_small_corrupt_jpeg_is_refused_not_passed_on():
    raw = small_photo(224, 150)
    with pytest.raises(InvalidImageError):
        prepare_image(raw[: len(raw) // 2], 224)
