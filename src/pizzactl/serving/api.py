"""The gateway's API: request and response schemas (OpenAPI), and reading a request into image bytes.

A request names its image in one of four ways: JSON `{"url": ...}` or `{"image_b64": ...}`, a
multipart upload (field `file`), or the raw bytes (Content-Type image/*). Everything here
is strict and cheap, and every refusal is a 4xx PizzaError.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from pizzactl.errors import (
    BadInputError,
    InvalidBase64Error,
    InvalidJSONError,
    PayloadTooLargeError,
    RequestShapeError,
)

# --- schemas --------------------------------------------------------------------------------


class UrlItem(BaseModel):
    """An image to fetch from a public http(s) URL."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"url": "https://example.com/margherita.jpg"}]}
    )
    url: str = Field(..., max_length=4096, description="http(s) URL of a JPEG, PNG, GIF, BMP, WebP or TIFF image.")


class B64Item(BaseModel):
    """An image sent inline, base64-encoded (a data: URL prefix is accepted)."""

    model_config = ConfigDict(extra="forbid")
    image_b64: str = Field(..., description="Base64 of the image file's bytes.")


PredictItem = UrlItem | B64Item
_ITEM = TypeAdapter(PredictItem)


class PredictResponse(BaseModel):
    label: str = Field(..., description="The predicted class, e.g. 'pizza' or 'not_pizza'.")
    probability: float = Field(
        ...,
        ge=0,
        le=1,
        description="Two classes: P(positive class), e.g. P(pizza), whatever the label. More: P(label).",
    )
    model_version: int = Field(..., description="The model version that answered (TF Serving version number).")
    probabilities: dict[str, float] = Field(
        ...,
        description="Every class's probability, in the model's class order, e.g. {'not_pizza': 0.03, 'pizza': 0.97}.",
    )


class ErrorBody(BaseModel):
    code: str = Field(..., description="Stable machine-readable error code.")
    message: str
    hint: str | None = None
    status: int | None = Field(None, description="HTTP status of this error (in batch items).")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str
    model_version: int
    image_size: int


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request: bad JSON, bad base64, bad or unsafe URL",
        413: "Image or request too large",
        415: "Not an image format or media type the gateway accepts",
        422: "Well-formed but unusable: schema mismatch, corrupt image, URL fetch failed",
        429: "This client holds its share of a full queue: retry after Retry-After seconds",
        503: "The queue is full, or the model server is down, stuck or has no model (Retry-After set)",
    }
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"anyOf": [_ref("UrlItem"), _ref("B64Item")]}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
BATCH_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "array", "items": {"anyOf": [_ref("UrlItem"), _ref("B64Item")]}}}
    },
}


# --- reading a request ----------------------------------------------------------------------

JSON_MEDIA = ("", "application/json", "text/plain")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media in JSON_MEDIA or media.endswith("+json")


_DATA_URL = re.compile(r"^data:[^,;]*(;[^,;]*)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def decode_b64(text: str, max_bytes: int) -> bytes:
    """Standard or URL-safe base64 (padding optional, data: prefix allowed) -> bytes, or 400."""
    text = _WHITESPACE.sub("", _DATA_URL.sub("", text.strip(), count=1))
    if not text:
        raise InvalidBase64Error("image_b64 is empty.", hint="Put the base64 of the image file in image_b64.")
    if len(text) * 3 // 4 > max_bytes + 3:
        raise PayloadTooLargeError(f"The image is larger than {max_bytes:,} bytes.", hint="Send a smaller image.")
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            if decode is base64.b64decode:
                return base64.b64decode(padded, validate=True)
            if re.fullmatch(r"[A-Za-z0-9_\-]*=*", padded):
                return base64.urlsafe_b64decode(padded)
        except (binascii.Error, ValueError):
            continue
    raise InvalidBase64Error(
        "image_b64 is not valid base64.", hint="Encode the image file's bytes with standard base64."
    )


def validate_item(obj: Any) -> UrlItem | B64Item:
    try:
        return _ITEM.validate_python(obj)
    except ValidationError:
        if isinstance(obj, dict):
            keys = set(obj)
            if not keys & {"url", "image_b64"}:
                raise RequestShapeError('Send {"url": "https://..."} or {"image_b64": "..."}.') from None
            if {"url", "image_b64"} <= keys:
                raise RequestShapeError('Send either "url" or "image_b64", not both.') from None
            extra = sorted(keys - {"url", "image_b64"})
            if extra:
                raise RequestShapeError(f'Unknown field(s) {extra}: send only "url" or "image_b64".') from None
            raise RequestShapeError('"url" and "image_b64" must be strings.') from None
        raise RequestShapeError(
            f'Expected an object like {{"url": "https://..."}}, got {type(obj).__name__}.'
        ) from None


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJSONError(
            "The request body is not valid JSON.", hint='Send e.g. {"url": "https://..."}.'
        ) from None


async def read_upload(request: Request) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=16)
    except StarletteHTTPException:
        raise
    except (ValueError, KeyError, AssertionError) as exc:  # malformed multipart
        raise BadInputError(
            f"The multipart body cannot be parsed: {exc}", hint="Send the image as the form field 'file'."
        ) from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestShapeError("The multipart form has no file field 'file'.", hint="curl -F file=@photo.jpg ...")
        return await upload.read()
    finally:
        await form.close()
