"""The model server's HTTP face: TF Serving's REST routes on a bare Starlette app, and `main()`.

Routes (as TF Serving's): `GET /v1/models/<name>[/versions/<n>|/labels/<label>]` (status),
`GET .../metadata`, `POST .../<name>[/versions/<n>|/labels/<label>]:predict`, and Prometheus metrics at
`/monitoring/prometheus/metrics`. Every error is TF Serving's `{"error": "..."}` through
`install_error_handlers`. No request models or OpenAPI on the hot path: the API is TF
Serving's, not ours, and stdlib JSON is what it costs.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pizzactl.config import add_argument, load_settings, server_settings
from pizzactl.errors import (
    BadInputError,
    MissingDependencyError,
    RouteNotFoundError,
    install_error_handlers,
    tf_serving_body,
)
from pizzactl.model.runtimes import configure_tf_threads
from pizzactl.serving import log_to_stderr, run_server, server_arguments
from pizzactl.serving.middleware import BodyLimit, ObserveRequests
from pizzactl.serving.modelserver import kserve, rest, v2
from pizzactl.serving.modelserver.server import ModelServer, ModelServerConfig
from pizzactl.tfimport import import_quietly, quiet_tf_logs

log = logging.getLogger("pizzactl.modelserver")


class ModelNameConvertor(Convertor):
    """A model name stops at '/' and ':' (`pizza:predict` is the name `pizza` and the verb `predict`)."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("model", ModelNameConvertor())


class Metrics:
    """Prometheus metrics, on their own registry (several servers may live in one test process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.http = Counter(
            "pizzactl_model_requests",
            "Model server requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pizzactl_model_batch_size",
            "Images per server-side batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "pizzactl_model_batch_seconds", "Seconds to run one batch", registry=self.registry
        )

    def watch_queue(self, server: ModelServer) -> None:
        """Shed requests by reason, and the queue's bound and fill (serving/admission.py)."""
        from prometheus_client import Counter, Gauge

        shed = Counter(
            "pizzactl_model_shed_requests",
            "Requests refused at once because the queue was full, by reason",
            ["reason"],
            registry=self.registry,
        )
        shed.labels("queue_full")
        server.admission.on_shed = lambda reason: shed.labels(reason).inc()
        bound = Gauge("pizzactl_model_queue_bound_images", "Images the queue may hold", registry=self.registry)
        bound.set_function(server.admission.bound)
        held = Gauge("pizzactl_model_queued_images", "Images queued or running", registry=self.registry)
        held.set_function(lambda: server.admission.held)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_request(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        verb = scope.get("path_params", {}).get("verb")
        endpoint = scope.get("endpoint")
        route = verb or getattr(endpoint, "__name__", None) or "other"
        self.http.labels(route, str(status)).inc()


def _version(request: Request) -> int | None:
    return request.path_params.get("version")


def _label(request: Request) -> str | None:
    return request.path_params.get("label")


def create_app(
    models_dir: Path | str | None = None,
    config: ModelServerConfig | None = None,
    grpc_address: str | None = None,
    **overrides: Any,
) -> Starlette:
    """The model server as an ASGI app (the watcher and batcher start with the app's lifespan).

    Without `config`, the settings (PIZZACTL_* variables, pizzactl.toml) and `overrides` decide.
    With `grpc_address` (host:port) TF Serving's and the Open Inference Protocol's gRPC services start beside it.
    """
    if config is None:
        config = ModelServerConfig.from_settings(load_settings(), models_dir=models_dir, **overrides)
    server = ModelServer(config)
    metrics = Metrics()
    server.batcher.on_batch = metrics.observe_batch
    metrics.watch_queue(server)

    async def status(request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse(kserve.v1_status(name, server.status(name, _version(request), _label(request))))

    async def metadata(request: Request) -> Response:
        return JSONResponse(server.metadata(request.path_params["name"], _version(request), _label(request)))

    async def predict(request: Request) -> Response:
        verb = request.path_params["verb"]
        if verb in ("classify", "regress"):
            raise BadInputError(f"{verb} is not supported by this server (use :predict)")
        if verb != "predict":
            raise RouteNotFoundError(f"Malformed request: {request.method} {request.url.path}")
        payload = rest.parse_json(await request.body())
        if not isinstance(payload, dict):
            raise BadInputError("JSON Value: request must be a JSON object")
        body, used = await server.predict(request.path_params["name"], _version(request), payload, _label(request))
        return JSONResponse(body, headers={"X-Model-Version": str(used)})

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app):
        await server.startup()
        grpc_server = None
        try:
            if grpc_address:
                try:
                    # grpc is only loaded when served
                    from pizzactl.serving.modelserver import grpc_tfs, grpc_v2
                except ImportError as exc:
                    raise MissingDependencyError(
                        f"--grpc-port needs grpcio and the generated gRPC stubs: {exc}",
                        hint="pip install 'pizzactl[serve]' (building pizzactl generates the stubs with grpcio-tools)",
                    ) from None
                grpc_server = await grpc_v2.start(
                    server, grpc_address, config.max_request_bytes, grpc_tfs.handlers(server)
                )
                log.info("TF Serving's gRPC API and the Open Inference Protocol over gRPC on %s", grpc_address)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=1)
            await server.shutdown()

    model = "/v1/models/{name:model}"
    prefixes = (model, model + "/versions/{version:int}", model + "/labels/{label:model}")
    routes = [Route(prefix + ":{verb}", predict, methods=["POST"]) for prefix in prefixes]
    routes += [Route(prefix + "/metadata", metadata, methods=["GET"]) for prefix in prefixes]
    routes += [Route(prefix, status, methods=["GET"]) for prefix in prefixes]
    routes.append(Route("/monitoring/prometheus/metrics", prometheus, methods=["GET"]))
    routes += kserve.v1_routes() + v2.v2_routes(server)
    app = Starlette(routes=routes, lifespan=lifespan)
    install_error_handlers(app, tf_serving_body, log=log)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes, body=tf_serving_body)
    app.add_middleware(ObserveRequests, observe=metrics.observe_request)
    app.state.server = server
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Flags override the PIZZACTL_* variables and pizzactl.toml (see `pizzactl config show`)."""
    parser = argparse.ArgumentParser(
        prog="python -m pizzactl.serving.modelserver",
        description="TF Serving-compatible REST model server for pizzactl SavedModels (with batching and hot reload).",
    )
    add_argument(parser, "models_dir")
    server_arguments(parser)
    add_argument(parser, "model_port", "--port")
    for name in ("max_batch_size", "batch_timeout_ms", "batch_threads", "poll_seconds", "model_config_file"):
        add_argument(parser, name)
    add_argument(parser, "tf_intra_op_threads", "--intra-op-threads")
    add_argument(parser, "tf_inter_op_threads", "--inter-op-threads")
    add_argument(parser, "litert_split")
    add_argument(parser, "model_runtime")
    add_argument(parser, "grpc_port", "--grpc-port")
    settings = server_settings(vars(parser.parse_args(argv)))
    config = ModelServerConfig.from_settings(settings)

    level = settings.log_level
    log_to_stderr(level)
    quiet_tf_logs()  # also at --log-level debug: its C++ INFO lines stay out, as before
    if level.lower() != "debug":
        import_quietly()  # TF's start-up INFO lines are not the model server's log
    intra, inter = configure_tf_threads(config.tf_intra_op_threads, config.tf_inter_op_threads)
    log.info("TensorFlow threads: %s intra-op, %s inter-op", intra or "default", inter or "default")
    run_server(
        create_app(config=config, grpc_address=f"{settings.host}:{settings.grpc_port}" if settings.grpc_port else None),
        settings.host,
        settings.model_port,
        level,
        settings=settings,
        body=tf_serving_body,
    )
