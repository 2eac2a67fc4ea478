"""Check every image with Pillow before the model sees it, and shrink it for the wire.

`load_image` turns untrusted bytes into an RGB `PIL.Image` or raises a 4xx `PizzaError`
(too large -> 413, not an image we accept -> 415, truncated or corrupt -> 422), applying EXIF
orientation and flattening transparency onto white. `encode_for_model` caps each side at
the model's input size and re-encodes as JPEG: the model squashes every image to S x S
anyway, so nothing it would see is lost, and a 5 MB phone photo becomes ~15-30 KB. A JPEG that
is already small and upright goes as it came (`sendable_as_is`).
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from pizzactl.config import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from pizzactl.errors import InvalidImageError, PayloadTooLargeError, UnsupportedMediaError

DEFAULT_IMAGE_SIZE = 224
WIRE_BUDGET = 60 * 1024  # bytes per image sent to the model server
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF"})


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS


def load_image(data: bytes, limits: ImageLimits = ImageLimits(), draft_size: int | None = None) -> Image.Image:
    """Untrusted bytes -> a fully decoded, upright RGB image, or a 4xx PizzaError.

    With `draft_size`, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps both
    sides >= draft_size (libjpeg's DCT scaling): a 512 px photo for a 224 px model decodes at
    256 px in about half the time, and every byte is still read, so corrupt data still fails.
    """
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(
            f"The image is {len(data):,} bytes; the limit is {limits.max_bytes:,}.",
            hint="Send a smaller image (the model only needs a few hundred pixels a side).",
        )
    if not data:
        raise InvalidImageError(
            "The image is empty.", hint="Send the bytes of a JPEG, PNG, GIF, BMP, WebP or TIFF image."
        )
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            if fmt not in ACCEPTED_FORMATS:
                raise UnsupportedMediaError(
                    f"{fmt} images are not supported.",
                    hint=f"Send one of: {', '.join(sorted(ACCEPTED_FORMATS - {'MPO'}))}.",
                )
            pixels = image.width * image.height
            if pixels > limits.max_pixels:
                raise PayloadTooLargeError(
                    f"The image is {image.width}x{image.height} ({pixels:,} pixels); the limit is {limits.max_pixels:,}.",
                    hint="Downscale the image before sending it.",
                )
            if draft_size and fmt in ("JPEG", "MPO"):
                image.draft(None, (int(draft_size), int(draft_size)))
            image.load()  # decode now: truncated or corrupt data fails here, not later
            with contextlib.suppress(Exception):
                ImageOps.exif_transpose(image, in_place=True)  # in place: an upright photo is not copied
            return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLargeError(
            "The image has too many pixels (decompression bomb protection).",
            hint="Downscale the image before sending it.",
        ) from None
    except UnidentifiedImageError:
        raise UnsupportedMediaError(
            "The data is not an image format pizzactl can read.",
            hint="Send a JPEG, PNG, GIF, BMP, WebP or TIFF image.",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, IndexError, struct.error) as exc:
        raise InvalidImageError(
            f"The image is truncated or corrupt ({exc}).",
            hint="Check the file opens in an image viewer, then send it again.",
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited onto white, 16-bit scaled to 8-bit."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np

        array = np.asarray(image).astype("float64")
        peak = array.max() if array.size else 0
        if mode.startswith("I;16") or peak > 255:
            scale = 255.0 / 65535.0 if peak <= 65535 else 255.0 / peak
            array = array * scale
        array = np.clip(array, 0, 255).astype("uint8")
        return Image.fromarray(array, "L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def encode_for_model(image: Image.Image, image_size: int = DEFAULT_IMAGE_SIZE, budget: int = WIRE_BUDGET) -> bytes:
    """Cap each side at `image_size` (bilinear with antialias, as the model resizes) -> JPEG <= budget."""
    size = max(16, int(image_size))
    width, height = image.size
    target = (min(width, size), min(height, size))
    if target != image.size:
        image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=None)
    data = b""
    for quality in (90, 80, 70, 60, 50, 40):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        if len(data) <= budget:
            return data
    while len(data) > budget and min(image.size) > 16:  # a huge model input size: shrink further
        image = image.resize((max(16, image.width * 3 // 4), max(16, image.height * 3 // 4)), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=40)
        data = buf.getvalue()
    return data


def sendable_as_is(data: bytes, image_size: int, budget: int = WIRE_BUDGET) -> bool:
    """Whether an upload (already validated by `load_image`) can go to the model server unchanged.

    A JPEG in RGB or grey, upright (no EXIF orientation to apply), each side <= `image_size` and
    within the wire budget: the model server decodes it to the pixels training decodes from the
    same file, where re-encoding it would cost the gateway CPU and the picture a JPEG generation.
    Only the header is read here.
    """
    if len(data) > budget:
        return False
    with Image.open(io.BytesIO(data)) as image:
        return (
            image.format == "JPEG"
            and image.mode in ("RGB", "L")
            and image.width <= image_size
            and image.height <= image_size
            and image.getexif().get(ExifTags.Base.Orientation, 1) == 1
        )


def for_model(data: bytes, image: Image.Image, image_size: int = DEFAULT_IMAGE_SIZE) -> bytes:
    """What the model server gets for an upload validated into `image`: the upload itself if it is
    `sendable_as_is`, else `encode_for_model(image)`."""
    return data if sendable_as_is(data, image_size) else encode_for_model(image, image_size)


def prepare_image(data: bytes, image_size: int = DEFAULT_IMAGE_SIZE, limits: ImageLimits = ImageLimits()) -> bytes:
    """Validate and shrink in one call (what the gateway does per image)."""
    return for_model(data, load_image(data, limits, draft_size=image_size), image_size)
