"""What the gateway does with an image, as named steps: fetch -> decode -> encode -> call model -> answer.

* fetch: the image's bytes from the request (upload, raw body, base64) or its URL (`fetch.py`,
  with the SSRF and redirect policy);
* decode: validate untrusted bytes with Pillow into an upright RGB image (4xx when unusable);
* encode: shrink to the model's input size and re-encode as a small JPEG (`prepare.py`): the
  model squashes every image to S x S anyway, so the wire carries ~20 KB, not a 5 MB photo (a
  JPEG already within the model's size, upright and small, goes as it came);
* call model: one TF Serving `:predict` request for all the images at hand (`client.py`);
* answer: the model's outputs as the gateway's JSON.

`Gateway` holds the clients those steps share (one per app). Decode and encode run in one
thread hop (`prepare`), since both are CPU work on the same image.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from pizzactl.config import Settings, load_settings, view
from pizzactl.errors import (
    BadInputError,
    InvalidImageError,
    MissingDependencyError,
    PizzaError,
    QueueFullError,
    UnsupportedMediaError,
    gateway_body,
)
from pizzactl.serving import prepare as images
from pizzactl.serving.admission import Admission
from pizzactl.serving.api import (
    B64Item,
    UrlItem,
    decode_b64,
    is_json,
    media_type,
    parse_json,
    read_upload,
    validate_item,
)
from pizzactl.serving.canary import CanarySplit
from pizzactl.serving.client import ModelClient, Prediction
from pizzactl.serving.fetch import FetchPolicy, fetch_image, new_session
from pizzactl.serving.modelserver.batching import isolate_failures_async
from pizzactl.serving.rollout import PlanFile, Rollout

STATIC_DIR = Path(__file__).with_name("static")
log = logging.getLogger("pizzactl.gateway")


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway needs: a view of `Settings` (PIZZACTL_* variables, pizzactl.toml, flags).

    No defaults for settings here: each comes from the setting of the same name, declared once in config.py."""

    model_url: str
    model_protocol: str  # rest | grpc: how the model server is called (client.py, grpc_client.py)
    model_grpc_url: str  # host:port, for grpc
    model_name: str
    allow_private_urls: bool
    model_timeout: float
    max_concurrency: int
    max_image_bytes: int
    max_image_pixels: int
    max_request_bytes: int
    max_batch_items: int
    fetch_timeout: float
    classes: str | None  # comma-separated class names, when the model server does not say them
    # API keys (auth.py): the gateway keeps their digests only
    api_key: str | None = field(repr=False)
    api_key_hashes: str | None
    metrics_require_key: bool
    api_key_rate: float
    api_key_burst: int
    queue_seconds: float  # admission: the queue holds this much work at the measured rate
    max_queue: int  # admission: a fixed bound in images instead (0: measured)
    max_batch_size: int  # the model server's: how long one of its batches takes, at the measured rate
    canary_percent: float  # canary.py: this share of predict calls to canary_version, the rest to stable_version
    canary_version: str
    stable_version: str
    shadow: bool  # rollout: every call also to the candidate, in the background; users get stable's answers
    rollout_plan_file: Path | None  # rollout.PlanFile: a plan that replaces the four above while running
    poll_seconds: float  # how often rollout_plan_file is looked at
    rollout_dir: Path | None  # rollout: disagreements kept here (None: <state_dir>/rollout)
    rollout_keep: int
    state_dir: Path
    static_dir: Path = STATIC_DIR  # not a setting

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GatewayConfig:
        overrides["model_url"] = overrides.get("model_url") or settings.model_server_url
        overrides["model_grpc_url"] = overrides.get("model_grpc_url") or settings.model_server_grpc_address
        return view(cls, settings, **overrides)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> GatewayConfig:
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
    def limits(self) -> images.ImageLimits:
        return images.ImageLimits(self.max_image_bytes, self.max_image_pixels)

    @property
    def disagreements_dir(self) -> Path:
        return Path(self.rollout_dir) if self.rollout_dir else Path(self.state_dir) / "rollout"


class Metrics:
    """The gateway's Prometheus metrics, on the app's own registry."""

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
        self.shed = Counter(
            "pizzactl_gateway_shed_requests",
            "Requests refused at once with 429/503 because a queue was full, by reason: queue_full (the "
            "gateway's), client_share (429: the client held its share of it), model_server_full",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("queue_full", "client_share", "model_server_full"):
            self.shed.labels(reason)
        self.canary_fallbacks = Counter(
            "pizzactl_gateway_canary_fallbacks",
            "Model-server calls the canary candidate failed and stable answered instead",
            registry=self.registry,
        )

    def watch_queue(self, admission: Admission) -> None:
        """The gateway queue's bound and fill, read at scrape time."""
        from prometheus_client import Gauge

        admission.on_shed = lambda reason: self.shed.labels(reason).inc()
        bound = Gauge("pizzactl_gateway_queue_bound_images", "Images the queue may hold", registry=self.registry)
        bound.set_function(admission.bound)
        held = Gauge("pizzactl_gateway_queued_images", "Images admitted and not yet answered", registry=self.registry)
        held.set_function(lambda: admission.held)

    def observe_request(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        """By route template, so label values stay bounded."""
        label = getattr(scope.get("route"), "path", None) or "unmatched"
        self.requests.labels(label, scope["method"], str(status)).inc()
        self.latency.labels(label).observe(seconds)


@dataclass(frozen=True)
class Prepared:
    """A validated image, and its wire JPEG for a model of input size `size` (when known)."""

    data: bytes
    size: int | None
    jpeg: bytes | None


def prepare(data: bytes, limits: images.ImageLimits, size: int | None) -> Prepared:
    """decode (4xx PizzaError on bad input) and, with a size, encode: always the same pixels per size."""
    image = images.load_image(data, limits, draft_size=size)
    return Prepared(data, size, images.for_model(data, image, size) if size else None)


def class_probabilities(prediction: Prediction, classes: Sequence[str]) -> dict[str, float]:
    """{class: probability} in the model's class order.

    Without class names (TF Serving says none and PIZZACTL_CLASSES is unset) the keys are the
    column numbers; a binary model exported before `probabilities` existed gets (1 - p, p).
    """
    probabilities = prediction.probabilities
    if probabilities is None:
        if len(classes) != 2:
            return {}
        probabilities = (1.0 - prediction.probability, prediction.probability)
    names = classes if len(classes) == len(probabilities) else [str(i) for i in range(len(probabilities))]
    return dict(zip(names, probabilities, strict=True))


class Gateway:
    """The steps, with the clients they share: one instance per app."""

    def __init__(self, config: GatewayConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        client: type[ModelClient] = ModelClient
        address = config.model_url
        if config.model_protocol == "grpc":
            try:
                from pizzactl.serving.grpc_client import GrpcModelClient  # grpcio only when asked for
            except ImportError as exc:
                raise MissingDependencyError(
                    f"model_protocol grpc needs grpcio and protobuf: {exc}",
                    hint="pip install 'pizzactl[grpc]' (the gateway image has no grpcio: use model_protocol rest there)",
                ) from None
            client, address = GrpcModelClient, config.model_grpc_url
        self.model = client(
            address,
            config.model_name,
            timeout=config.model_timeout,
            max_concurrency=config.max_concurrency,
            observe=lambda call, seconds: metrics.model_latency.labels(call).observe(seconds),
            max_wait=3 * config.queue_seconds,
        )
        self.admission = Admission(config.queue_seconds, config.max_queue)
        metrics.watch_queue(self.admission)
        self.split = CanarySplit(config.canary_percent, config.canary_version, config.stable_version)
        self.rollout = Rollout(
            self.split,
            self.model,
            self.admission,
            shadow=config.shadow,
            directory=config.disagreements_dir,
            keep=config.rollout_keep,
            max_in_flight=max(4, config.max_concurrency // 4),
            registry=metrics.registry,
        )
        self.plan_file = PlanFile(config.rollout_plan_file) if config.rollout_plan_file else None
        if self.plan_file is not None:
            self.plan_file.check(self.rollout)  # the plan written for this start, if there is one
        self.policy = config.fetch_policy
        self._fetch_clients: dict[int, Any] = {}

    # --- admission

    def admit(self, request: Request, images: int) -> AbstractContextManager[None]:
        """A place in the bounded queue for `images` images, or 429/503 with Retry-After at once."""
        return self.admission.admit(images, request.client.host if request.client else None)

    # --- fetch

    def _fetch_client(self):
        loop = asyncio.get_running_loop()
        entry = self._fetch_clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            entry = (loop, new_session(self.policy))
            self._fetch_clients[id(loop)] = entry
        return entry[1]

    async def fetch(self, item: UrlItem | B64Item) -> bytes:
        """The bytes of a JSON item: its URL fetched under the policy, or its base64 decoded."""
        if isinstance(item, UrlItem):
            return await fetch_image(item.url, self.policy, self._fetch_client())
        return decode_b64(item.image_b64, self.config.max_image_bytes)

    async def fetch_request(self, request: Request) -> bytes:
        """The image of a /predict request: an upload, the raw body, or a JSON item."""
        media = media_type(request)
        if media == "multipart/form-data":
            return await read_upload(request)
        if media.startswith("image/") or media == "application/octet-stream":
            return await request.body()
        if is_json(media):
            return await self.fetch(validate_item(parse_json(await request.body())))
        raise UnsupportedMediaError(
            f"Content-Type {media!r} is not accepted.",
            hint="Send application/json, multipart/form-data (field 'file') or the image bytes (image/*).",
        )

    # --- decode and encode

    async def prepare(self, data: bytes) -> Prepared:
        """Validate (4xx on bad input) and, when the model's input size is known, shrink for the wire.

        One thread hop for both; the JPEG is decoded at reduced scale (`draft_size`). Before the
        first model-server call the size is unknown: the image is only validated here and is
        encoded in `predict`, the same way.
        """
        return await run_in_threadpool(prepare, data, self.config.limits, self.model.known_image_size())

    # --- call the model, answer

    async def predict(self, pictures: Sequence[Prepared]) -> list[dict[str, Any]]:
        """Prepared images -> the gateway's answers (one model-server call for all of them)."""
        info = await self.model.info()
        size = info.image_size
        if any(p.size != size for p in pictures):  # first request, or the new model takes another size
            limits = self.config.limits
            pictures = await run_in_threadpool(
                lambda: [p if p.size == size else prepare(p.data, limits, size) for p in pictures]
            )
        jpegs = [p.jpeg for p in pictures if p.jpeg is not None]
        try:
            with self.admission.meter.measure(len(jpegs)):
                # twice the expected wait: a request may arrive just as a long batch starts; and no
                # answer comes while a batch runs (a full one of a slow model can take longer than the timeout)
                admission = self.admission
                waits = (2 * admission.expected_wait(), admission.expected_wait(self.config.max_batch_size))
                rollout = self.rollout
                routes = rollout.routes()
                try:
                    predictions, version = await rollout.call(jpegs, waits, routes.first, routes.role, info.version)
                except PizzaError as exc:
                    if routes.fallback is None:
                        raise
                    # the candidate failed (down, unloaded, refused the image): stable answers instead
                    self.metrics.canary_fallbacks.inc()
                    rollout.stats.fallback()
                    log.warning("canary %s failed (%s): asking %s", routes.first, exc.code, routes.fallback)
                    predictions, version = await rollout.call(jpegs, waits, routes.fallback, "stable", info.version)
                else:
                    rollout.compare_later(routes, jpegs, predictions, waits)
        except QueueFullError as exc:  # the model server's queue
            self.metrics.shed.labels(exc.reason).inc()
            raise
        classes = info.classes or self.configured_classes
        return [self.answer(p, int(version or info.version), classes) for p in predictions]

    @property
    def configured_classes(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in (self.config.classes or "").split(",") if c.strip())

    def answer(self, prediction: Prediction, version: int, classes: Sequence[str] = ()) -> dict[str, Any]:
        """The gateway's JSON: the model's label and probability as the model server said them
        (for a binary model P(classes[1]), else P(label)), and every class's probability."""
        self.metrics.images.labels(prediction.label).inc()
        return {
            "label": prediction.label,
            "probability": prediction.probability,
            "model_version": version,
            "probabilities": class_probabilities(prediction, classes),
        }

    async def predict_each(self, payload: list[Any]) -> list[dict[str, Any]]:
        """A batch request: every item through the steps; an unusable item answers its own error.

        Items are fetched and prepared concurrently and predicted in one model-server call; if
        the model refuses one image, `isolate_failures_async` finds it.
        """

        async def fetch_and_prepare(obj: Any) -> Prepared | PizzaError:
            try:
                return await self.prepare(await self.fetch(validate_item(obj)))
            except BadInputError as exc:
                return exc

        prepared = await asyncio.gather(*(fetch_and_prepare(obj) for obj in payload))
        good = [p for p in prepared if isinstance(p, Prepared)]
        outcomes = iter(
            await isolate_failures_async(self.predict, [[p] for p in good], InvalidImageError) if good else []
        )
        answers = []
        for p in prepared:
            outcome = p if isinstance(p, PizzaError) else next(outcomes)
            if isinstance(outcome, PizzaError):
                answers.append(gateway_body(outcome, with_status=True))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answers.append(outcome[0])
        return answers

    async def aclose(self) -> None:
        await self.rollout.aclose()
        await self.model.aclose()
        loop = asyncio.get_running_loop()
        entry = self._fetch_clients.pop(id(loop), None)
        if entry:
            await entry[1].close()
