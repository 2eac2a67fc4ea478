"""The gateway: a FastAPI app in front of a TF Serving-compatible model server. No TensorFlow.

It takes an image (JSON `{"url"}` or `{"image_b64"}`, a multipart `file`, or raw image bytes),
fetches URLs safely (`fetch.py`), validates and shrinks every image with Pillow
(`images.py`), asks the model server (`client.py`) and answers
`{"label", "probability", "model_version"}`. Bad input is always a 4xx, a missing model
server a quick 503 with Retry-After, and every error has one JSON shape:
`{"error": {"code": ..., "message": ..., "hint": ...}}`.

Run it with `python -m pizzactl.serving.gateway --model-url http://127.0.0.1:8501 --port 9696`,
or build the app in-process with `create_app(...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from pizzactl import __version__
from pizzactl.config import GATEWAY_PORT, MODEL_NAME, Settings, load_settings, server_settings, view
from pizzactl.errors import (
    BadInputError,
    InvalidBase64Error,
    InvalidImageError,
    InvalidJSONError,
    PayloadTooLargeError,
    PizzaError,
    RequestShapeError,
    UnsupportedMediaError,
    error_response,
    gateway_body,
    install_error_handlers,
)
from pizzactl.serving import prepare
from pizzactl.serving.client import ModelClient
from pizzactl.serving.fetch import FetchPolicy, fetch_image, new_client

log = logging.getLogger("pizzactl.gateway")
STATIC_DIR = Path(__file__).with_name("static")


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway needs: a view of `Settings` (PIZZACTL_* variables, pizzactl.toml, flags)."""

    model_url: str
    model_name: str
    allow_private_urls: bool
    model_timeout: float
    max_concurrency: int
    max_image_bytes: int
    max_image_pixels: int
    max_request_bytes: int
    max_batch_items: int
    fetch_timeout: float
    static_dir: Path = STATIC_DIR

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GatewayConfig:
        overrides.setdefault("model_url", None)
        overrides["model_url"] = overrides["model_url"] or settings.model_server_url
        return view(cls, settings, **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewayConfig:
        """From the environment (and ./pizzactl.toml); `overrides` that are not None win."""
        return cls.from_settings(load_settings(environ=environ), **overrides)

    @property
    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            allow_private=self.allow_private_urls,
            max_bytes=self.max_image_bytes,
            total_timeout=self.fetch_timeout,
            read_timeout=min(5.0, self.fetch_timeout),
            connect_timeout=min(3.0, self.fetch_timeout),
        )

    @property
    def limits(self) -> prepare.ImageLimits:
        return prepare.ImageLimits(self.max_image_bytes, self.max_image_pixels)


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
    probability: float = Field(..., ge=0, le=1, description="P(pizza) from the model.")
    model_version: int = Field(..., description="The model version that answered (TF Serving version number).")


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


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request: bad JSON, bad base64, bad or unsafe URL",
        413: "Image or request too large",
        415: "Not an image format or media type the gateway accepts",
        422: "Well-formed but unusable: schema mismatch, corrupt image, URL fetch failed",
        503: "The model server is down, slow or has no model (Retry-After set)",
    }
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_PREDICT_BODY = {
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
_BATCH_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "array", "items": {"anyOf": [_ref("UrlItem"), _ref("B64Item")]}}}
    },
}


# --- metrics --------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics on the app's own registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pizzactl_gateway_requests",
            "Gateway requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pizzactl_gateway_request_duration_seconds",
            "Gateway request latency by route",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
        )
        self.model_latency = Histogram(
            "pizzactl_gateway_model_server_duration_seconds",
            "Model server call latency by call",
            ["call"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
        )
        self.in_flight = Gauge("pizzactl_gateway_in_flight_requests", "Requests being handled", registry=self.registry)
        self.images = Counter(
            "pizzactl_gateway_images", "Images predicted, by label", ["label"], registry=self.registry
        )


class MetricsMiddleware:
    """Counts and times every request by its route template (bounded label values)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """413 for request bodies over the limit, checked while the body streams in."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = error_response(self._error())
                return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, limited, send)

    def _error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than {self.max_bytes:,} bytes.",
            hint="Send fewer or smaller images per request (PIZZACTL_MAX_REQUEST_BYTES raises the limit).",
        )


# --- request parsing ------------------------------------------------------------------------

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


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJSONError(
            "The request body is not valid JSON.", hint='Send e.g. {"url": "https://..."}.'
        ) from None


# --- the app --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A validated upload, and its wire JPEG for a model of input size `size` (when known)."""

    data: bytes
    size: int | None
    jpeg: bytes | None


def _prepare(data: bytes, limits: prepare.ImageLimits, size: int | None) -> Prepared:
    """Validate (4xx PizzaError on bad input); with a size, also shrink: always the same pixels per size."""
    image = prepare.load_image(data, limits, draft_size=size)
    return Prepared(data, size, prepare.encode_for_model(image, size) if size else None)


class Gateway:
    """The work behind the routes: one instance per app."""

    def __init__(self, config: GatewayConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.model = ModelClient(
            config.model_url,
            config.model_name,
            timeout=config.model_timeout,
            max_concurrency=config.max_concurrency,
            observe=lambda call, seconds: metrics.model_latency.labels(call).observe(seconds),
        )
        self.policy = config.fetch_policy
        self._fetch_clients: dict[int, Any] = {}

    def _fetch_client(self):
        loop = asyncio.get_running_loop()
        entry = self._fetch_clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            entry = (loop, new_client(self.policy))
            self._fetch_clients[id(loop)] = entry
        return entry[1]

    async def image_bytes(self, item: UrlItem | B64Item) -> bytes:
        if isinstance(item, UrlItem):
            return await fetch_image(item.url, self.policy, self._fetch_client())
        return decode_b64(item.image_b64, self.config.max_image_bytes)

    async def load(self, data: bytes) -> Prepared:
        """Validate (4xx on bad input) and, when the model's input size is known, shrink for the wire.

        One thread hop for both; the JPEG is decoded at reduced scale (`draft_size`). Before the
        first model-server call the size is unknown: the image is only validated here and is
        shrunk in predict_images, the same way.
        """
        size = self.model.known_image_size()
        return await run_in_threadpool(_prepare, data, self.config.limits, size)

    async def predict_images(self, pictures: list[Prepared]) -> list[dict[str, Any]]:
        """Validated images -> prediction dicts (one model-server call for all of them)."""
        info = await self.model.info()
        size = info.image_size
        if any(p.size != size for p in pictures):  # first request, or the new model takes another size
            limits = self.config.limits
            jpegs = await run_in_threadpool(
                lambda: [p.jpeg if p.size == size else _prepare(p.data, limits, size).jpeg for p in pictures]
            )
        else:
            jpegs = [p.jpeg for p in pictures]
        predictions, version = await self.model.predict(jpegs)
        results = []
        for p in predictions:
            self.metrics.images.labels(p.label).inc()
            results.append(
                {"label": p.label, "probability": p.probability, "model_version": int(version or info.version)}
            )
        return results

    async def aclose(self) -> None:
        await self.model.aclose()
        loop = asyncio.get_running_loop()
        entry = self._fetch_clients.pop(id(loop), None)
        if entry:
            await entry[1].aclose()


def create_app(
    model_url: str | None = None,
    *,
    allow_private_urls: bool | None = None,
    config: GatewayConfig | None = None,
    **overrides: Any,
) -> FastAPI:
    """The gateway app. Unset arguments come from PIZZACTL_* variables, then the defaults."""
    given = {
        k: v
        for k, v in dict(model_url=model_url, allow_private_urls=allow_private_urls, **overrides).items()
        if v is not None
    }
    config = replace(config, **given) if config is not None else GatewayConfig.from_env(**given)
    metrics = Metrics()
    gateway = Gateway(config, metrics)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info(
            "gateway for %s at %s (allow_private_urls=%s)",
            config.model_name,
            config.model_url,
            config.allow_private_urls,
        )
        try:
            yield
        finally:
            await gateway.aclose()

    app = FastAPI(
        title="pizzactl gateway",
        version=__version__,
        description=(
            "Is this a pizza? Send an image (URL, base64 or file upload) and get the model's answer. "
            'Every error is `{"error": {"code", "message", "hint"}}`.'
        ),
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.config = config
    install_error_handlers(app, gateway_body, route_hint="See /docs for the API.", log=log)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=_error_responses(400, 413, 415, 422, 503),
        openapi_extra={"requestBody": _PREDICT_BODY},
        summary="Classify one image",
        description=(
            'JSON `{"url": "https://..."}` or `{"image_b64": "..."}`, a multipart form with a `file` field, '
            "or the raw image bytes (Content-Type image/* or application/octet-stream)."
        ),
    )
    async def predict(request: Request) -> dict[str, Any]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "multipart/form-data":
            data = await _upload(request)
        elif media.startswith("image/") or media == "application/octet-stream":
            data = await request.body()
        elif media in ("", "application/json", "text/plain") or media.endswith("+json"):
            item = validate_item(_parse_json(await request.body()))
            data = await gateway.image_bytes(item)
        else:
            raise UnsupportedMediaError(
                f"Content-Type {media!r} is not accepted.",
                hint="Send application/json, multipart/form-data (field 'file') or the image bytes (image/*).",
            )
        picture = await gateway.load(data)
        return (await gateway.predict_images([picture]))[0]

    @app.post(
        "/predict/batch",
        response_model=list[PredictResponse | ErrorResponse],
        responses=_error_responses(400, 413, 415, 422, 503),
        openapi_extra={"requestBody": _BATCH_BODY},
        summary="Classify several images in one request",
        description=(
            'A JSON list of `{"url"}` / `{"image_b64"}` objects -> a list in the same order. An item that '
            'cannot be used (bad URL, corrupt image ...) becomes `{"error": {"code", "message", "status"}}` '
            "in its place; the request as a whole fails (4xx/503) only if it is not a JSON list, has too many "
            "items, or the model server is unavailable."
        ),
    )
    async def predict_batch(request: Request) -> list[dict[str, Any]]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("", "application/json", "text/plain") and not media.endswith("+json"):
            raise UnsupportedMediaError(f"Content-Type {media!r} is not accepted.", hint="Send a JSON list.")
        payload = _parse_json(await request.body())
        if not isinstance(payload, list):
            raise RequestShapeError('Send a JSON list like [{"url": "https://..."}, {"image_b64": "..."}].')
        if len(payload) > config.max_batch_items:
            raise PayloadTooLargeError(
                f"{len(payload)} items; at most {config.max_batch_items} per request.",
                hint="Split the list (PIZZACTL_MAX_BATCH_ITEMS raises the limit).",
            )

        async def prepare_item(obj: Any):
            try:
                return await gateway.load(await gateway.image_bytes(validate_item(obj)))
            except BadInputError as exc:
                return exc

        prepared = await asyncio.gather(*(prepare_item(obj) for obj in payload))
        good = [i for i, p in enumerate(prepared) if not isinstance(p, PizzaError)]
        answers: dict[int, dict[str, Any]] = {}
        if good:
            try:
                results = await gateway.predict_images([prepared[i] for i in good])
                answers.update(zip(good, results, strict=False))
            except InvalidImageError:  # the model refused one image: find it
                for i in good:
                    try:
                        answers[i] = (await gateway.predict_images([prepared[i]]))[0]
                    except InvalidImageError as exc:
                        answers[i] = gateway_body(exc, with_status=True)
        return [
            gateway_body(p, with_status=True) if isinstance(p, PizzaError) else answers[i]
            for i, p in enumerate(prepared)
        ]

    @app.get("/healthz", response_model=Health, summary="Liveness: the gateway process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Ready,
        responses=_error_responses(503),
        summary="Readiness: the model server is reachable and has an AVAILABLE model",
    )
    async def readyz() -> dict[str, Any]:
        info = await gateway.model.info(refresh=True)
        return {
            "status": "ready",
            "model": config.model_name,
            "model_version": int(info.version),
            "image_size": info.image_size,
        }

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics_route() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    static_dir = Path(config.static_dir)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            static_dir / "index.html",
            headers={
                "Content-Security-Policy": (
                    "default-src 'self'; img-src 'self' data: blob: http: https:; "
                    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
            },
        )

    if static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=static_dir), name="static")

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (UrlItem, B64Item):
            components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


async def _upload(request: Request) -> bytes:
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


def main(argv: list[str] | None = None) -> None:
    """Flags override the PIZZACTL_* variables and pizzactl.toml (see `pizzactl config show`)."""
    parser = argparse.ArgumentParser(
        prog="python -m pizzactl.serving.gateway",
        description="pizzactl gateway: safe image intake in front of a TF Serving-compatible model server.",
    )
    parser.add_argument(
        "--model-url",
        dest="model_url",
        help="Model server base URL (env PIZZACTL_MODEL_URL; default http://127.0.0.1:<model port>).",
    )
    parser.add_argument("--model-name", help=f"Model name (env PIZZACTL_MODEL_NAME, default {MODEL_NAME}).")
    parser.add_argument("--host", help="Address to listen on (env PIZZACTL_HOST, default 127.0.0.1).")
    parser.add_argument("--port", type=int, help=f"Port (env PIZZACTL_PORT, default {GATEWAY_PORT}).")
    parser.add_argument(
        "--allow-private-urls",
        action="store_const",
        const=True,
        help="Allow fetching loopback and private-network URLs (env PIZZACTL_ALLOW_PRIVATE_URLS=1).",
    )
    parser.add_argument("--log-level", help="Log level (env PIZZACTL_LOG_LEVEL, default info).")
    parser.add_argument(
        "--access-log",
        action="store_const",
        const=True,
        help="Log every request (env PIZZACTL_ACCESS_LOG=1); off by default, /metrics counts them.",
    )
    settings = server_settings(vars(parser.parse_args(argv)))

    import uvicorn

    level = settings.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per URL fetch
    uvicorn.run(
        create_app(config=GatewayConfig.from_settings(settings)),
        host=settings.host,
        port=settings.port,
        log_level=level.lower(),
        access_log=settings.access_log,
        loop="auto",
        http="auto",  # auto = uvloop + httptools (uvicorn[standard])
    )


if __name__ == "__main__":
    main()
