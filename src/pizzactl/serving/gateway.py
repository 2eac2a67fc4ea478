"""The gateway: a FastAPI app in front of a TF Serving-compatible model server. No TensorFlow.

It takes an image (JSON `{"url"}` or `{"image_b64"}`, a multipart `file`, or raw image bytes)
and answers `{"label", "probability", "model_version"}`; what happens in between is
`pipeline.py` (fetch -> decode -> encode -> call model -> answer). This module holds the
routes. Bad input is always a 4xx, a missing model server a quick 503 with Retry-After, and
every error has one JSON shape: `{"error": {"code": ..., "message": ..., "hint": ...}}`.

Run it with `python -m pizzactl.serving.gateway --model-url http://127.0.0.1:8501 --port 9696`,
or build the app in-process with `create_app(...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from pizzactl import __version__
from pizzactl.config import add_argument, server_settings
from pizzactl.errors import (
    EXIT_USER,
    ConfigError,
    PayloadTooLargeError,
    RequestShapeError,
    UnsupportedMediaError,
    gateway_body,
    install_error_handlers,
)
from pizzactl.serving import log_to_stderr, run_server, server_arguments
from pizzactl.serving.api import (
    BATCH_BODY,
    PREDICT_BODY,
    B64Item,
    ErrorResponse,
    Health,
    PredictResponse,
    Ready,
    UrlItem,
    error_responses,
    is_json,
    media_type,
    parse_json,
)
from pizzactl.serving.auth import RequireKey, accepted_hashes
from pizzactl.serving.middleware import BodyLimit, ObserveRequests
from pizzactl.serving.pipeline import Gateway, GatewayConfig, Metrics

log = logging.getLogger("pizzactl.gateway")

CSP = (
    "default-src 'self'; img-src 'self' data: blob: http: https:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)


router = APIRouter()


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=error_responses(400, 413, 415, 422, 429, 503),
    openapi_extra={"requestBody": PREDICT_BODY},
    summary="Classify one image",
    description=(
        'JSON `{"url": "https://..."}` or `{"image_b64": "..."}`, a multipart form with a `file` field, '
        "or the raw image bytes (Content-Type image/* or application/octet-stream)."
    ),
)
async def predict(request: Request, response: Response) -> dict[str, Any]:
    gateway = _gateway(request)
    with gateway.admit(request, 1):
        picture = await gateway.prepare(await gateway.fetch_request(request))
        answer = (await gateway.predict([picture]))[0]
    response.headers["X-Model-Version"] = str(answer["model_version"])  # which version answered (canary.py)
    return answer


@router.post(
    "/predict/batch",
    response_model=list[PredictResponse | ErrorResponse],
    responses=error_responses(400, 413, 415, 422, 429, 503),
    openapi_extra={"requestBody": BATCH_BODY},
    summary="Classify several images in one request",
    description=(
        'A JSON list of `{"url"}` / `{"image_b64"}` objects -> a list in the same order. An item that '
        'cannot be used (bad URL, corrupt image ...) becomes `{"error": {"code", "message", "status"}}` '
        "in its place; the request as a whole fails (4xx/503) only if it is not a JSON list, has too many "
        "items, or the model server is unavailable."
    ),
)
async def predict_batch(request: Request) -> list[dict[str, Any]]:
    gateway = _gateway(request)
    media = media_type(request)
    if not is_json(media):
        raise UnsupportedMediaError(f"Content-Type {media!r} is not accepted.", hint="Send a JSON list.")
    payload = parse_json(await request.body())
    if not isinstance(payload, list):
        raise RequestShapeError('Send a JSON list like [{"url": "https://..."}, {"image_b64": "..."}].')
    limit = gateway.config.max_batch_items
    if len(payload) > limit:
        raise PayloadTooLargeError(
            f"{len(payload)} items; at most {limit} per request.",
            hint="Split the list (PIZZACTL_MAX_BATCH_ITEMS raises the limit).",
        )
    with gateway.admit(request, len(payload)):
        return await gateway.predict_each(payload)


@router.get("/healthz", response_model=Health, summary="Liveness: the gateway process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses=error_responses(503),
    summary="Readiness: the model server is reachable and has an AVAILABLE model",
)
async def readyz(request: Request) -> dict[str, Any]:
    gateway = _gateway(request)
    info = await gateway.model.info(refresh=True)
    return {
        "status": "ready",
        "model": gateway.config.model_name,
        "model_version": int(info.version),
        "image_size": info.image_size,
    }


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
)
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(_gateway(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/rollout",
    summary="Rollout evidence: the canary/shadow split, per-version stats, and how two versions compare",
    description="Counters since the gateway started; null where nothing was measured yet (docs/serve.md).",
)
async def rollout(request: Request) -> dict[str, Any]:
    return _gateway(request).rollout.as_json()


@router.get("/", include_in_schema=False)
async def index(request: Request) -> FileResponse:
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return FileResponse(Path(_gateway(request).config.static_dir) / "index.html", headers=headers)


def create_app(
    model_url: str | None = None,
    *,
    allow_private_urls: bool | None = None,
    config: GatewayConfig | None = None,
    **overrides: Any,
) -> FastAPI:
    """The gateway app. Unset arguments come from the settings (PIZZACTL_* variables, pizzactl.toml)."""
    given = {
        k: v
        for k, v in dict(model_url=model_url, allow_private_urls=allow_private_urls, **overrides).items()
        if v is not None
    }
    config = replace(config, **given) if config is not None else GatewayConfig.from_env(**given)
    gateway = Gateway(config, Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info(
            "gateway for %s at %s (allow_private_urls=%s)",
            config.model_name,
            f"{config.model_grpc_url} (gRPC)" if config.model_protocol == "grpc" else config.model_url,
            config.allow_private_urls,
        )
        if app.state.api_keys:
            log.info("API keys required: %d accepted", app.state.api_keys)
        watcher = None
        if gateway.plan_file is not None:  # a new rollout plan without a restart (rollout.PlanFile)
            watcher = asyncio.get_running_loop().create_task(
                gateway.plan_file.watch(gateway.rollout, config.poll_seconds)
            )
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
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
    app.add_middleware(
        BodyLimit,
        max_bytes=config.max_request_bytes,
        hint="Send fewer or smaller images per request (PIZZACTL_MAX_REQUEST_BYTES raises the limit).",
    )
    add_key_check(app, config)
    app.add_middleware(ObserveRequests, observe=gateway.metrics.observe_request, in_flight=gateway.metrics.in_flight)
    app.include_router(router)
    if Path(config.static_dir).is_dir():
        app.mount("/static", StaticFiles(directory=config.static_dir), name="static")

    def custom_openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the item schemas the hand-written request bodies refer to."""
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


def add_key_check(app: FastAPI, config: GatewayConfig) -> None:
    """API keys (auth.py), when configured: checked before the body is read (inside the metrics, so 401s count)."""

    digests = accepted_hashes(config.api_key, config.api_key_hashes)
    if digests:
        app.add_middleware(
            RequireKey,
            digests=digests,
            metrics_open=not config.metrics_require_key,
            rate=config.api_key_rate,
            burst=config.api_key_burst,
        )
    app.state.api_keys = len(digests)


def main(argv: list[str] | None = None) -> None:
    """Flags override the PIZZACTL_* variables and pizzactl.toml (see `pizzactl config show`)."""
    parser = argparse.ArgumentParser(
        prog="python -m pizzactl.serving.gateway",
        description="pizzactl gateway: safe image intake in front of a TF Serving-compatible model server.",
    )
    add_argument(parser, "model_url")
    add_argument(parser, "model_protocol")
    server_arguments(parser)
    for name in ("port", "allow_private_urls", "access_log"):
        add_argument(parser, name)
    settings = server_settings(vars(parser.parse_args(argv)))
    log_to_stderr(settings.log_level)
    try:
        app = create_app(config=GatewayConfig.from_settings(settings))
    except ConfigError as exc:  # e.g. api_key_hashes that are not digests: the hint, not a traceback
        sys.stderr.write(f"Error: {exc.message}\n{exc.hint}\n")
        raise SystemExit(EXIT_USER) from None
    run_server(app, settings.host, settings.port, settings.log_level, access_log=settings.access_log, settings=settings)


if __name__ == "__main__":
    main()
