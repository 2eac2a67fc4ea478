"""Async client for a TF Serving REST endpoint (TF Serving itself or pizzactl's model server).

One pooled `aiohttp.ClientSession` per event loop (httpx's connection pool cost the gateway
milliseconds of CPU per call under load; aiohttp's costs a fraction of one), a semaphore
bounding the requests in flight,
and a deadline per call: when the model server is down, stuck or not ready, every call ends
with `ModelUnavailableError` (the gateway's 503 + Retry-After), never a hang, and the next call
simply tries again, so recovery needs no restart. The deadline is for a server that makes no
progress, not for queueing. Once a call has waited `timeout` plus the wait its caller expects
for the queue ahead of it (`queue_wait`), and the model server has answered no call for
`timeout` plus the time one batch takes (`batch_wait`), the server is asked for its status (one
probe for all the waiting calls): a server that answers within `timeout` is busy, not stuck, and
the calls wait on; one that does not (stuck, dead) fails them. In any case a call fails after
`timeout` + `max_wait` seconds. A full model server answers 503 with Retry-After at once, which
is passed on.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from pizzactl.config import DEFAULTS, MODEL_NAME
from pizzactl.errors import InvalidImageError, ModelUnavailableError, QueueFullError
from pizzactl.serving.modelserver.rest import binary_instances

CONNECT_TIMEOUT = (
    1.0  # seconds per TCP connect attempt; attempts repeat until the model timeout (a dead server refuses at once)
)
DEFAULT_IMAGE_SIZE = 224
T = TypeVar("T")


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    probabilities: tuple[float, ...] | None = None  # in `classes` order; None from a model without them


@dataclass(frozen=True)
class ModelInfo:
    version: str
    image_size: int
    pizzactl: dict

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names from the version's pizzactl.json (empty if the model server does not say)."""
        return tuple(str(c) for c in self.pizzactl.get("classes") or ())


def _unavailable(message: str, retry_after: int = 1) -> ModelUnavailableError:
    error = ModelUnavailableError(message, hint="The model server is down, overloaded or still loading; retry shortly.")
    error.retry_after = retry_after
    return error


def image_size_from_metadata(metadata: dict) -> int:
    """The model's input size: pizzactl.json's image_size, else the serving_pixels input shape."""
    meta = metadata.get("metadata", {})
    size = (meta.get("pizzactl") or {}).get("image_size")
    if isinstance(size, int) and size > 0:
        return size
    try:
        sigs = meta["signature_def"]["signature_def"]
        dims = sigs["serving_pixels"]["inputs"]["pixels"]["tensor_shape"]["dim"]
        size = int(dims[1]["size"])
        if size > 0:
            return size
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    return DEFAULT_IMAGE_SIZE


@dataclass(frozen=True)
class Reply:
    """A model server answer, read in full."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class ModelClient:
    """predict(jpegs) / status() / info() against `<base_url>/v1/models/<name>`."""

    def __init__(
        self,
        base_url: str,
        model_name: str = MODEL_NAME,
        *,
        timeout: float = DEFAULTS.model_timeout,  # the settings' declared defaults, not a second copy
        max_concurrency: int = DEFAULTS.max_concurrency,
        info_ttl: float = 5.0,
        observe: Callable[[str, float], None] | None = None,
        max_wait: float = 0.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.info_ttl = info_ttl
        self.observe = observe
        self.max_wait = max_wait  # seconds of queueing a call may wait beyond `timeout` while the server progresses
        self.last_progress = -math.inf  # time.monotonic() of the last answer the model server gave
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession, asyncio.Semaphore]] = {}
        self._probes: dict[int, asyncio.Task[bool]] = {}  # the status probe in flight, per event loop
        self._info: tuple[float, ModelInfo] | None = None
        self._route_versions: dict[str, tuple[float, str]] = {}  # "/labels/canary" -> (when, "2")
        self._info_lock: asyncio.Lock | None = None

    @property
    def model_url(self) -> str:
        return f"{self.base_url}/v1/models/{self.model_name}"

    def _client(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop or entry[1].closed:
            session = aiohttp.ClientSession(
                # one connection more than the calls in flight: the status probe never waits for one
                connector=aiohttp.TCPConnector(limit=self.max_concurrency + 1, keepalive_timeout=30),
                # no total: `_request` keeps the deadline, which moves while the model server progresses
                # (a connect to a live server on a starved CPU can take longer than a short model timeout)
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
                trust_env=False,
            )
            entry = (loop, session, asyncio.Semaphore(self.max_concurrency))
            self._clients[id(loop)] = entry
        return entry[1], entry[2]

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        entry = self._clients.pop(id(loop), None)
        if entry is not None:
            await entry[1].close()

    def deadline(self, begun: float, queue_wait: float = 0.0, batch_wait: float = 0.0) -> float:
        """When a call begun at `begun` (monotonic) asks whether the server lives: no answer to any call
        for `timeout` + `batch_wait` seconds, but not before `timeout` + `queue_wait`; and when it
        gives up anyway: `timeout` + `max_wait` (or the two waits, if longer) after it began."""
        patient = max(begun + self.timeout + queue_wait, self.last_progress + self.timeout + batch_wait)
        return min(patient, begun + self.timeout + max(self.max_wait, queue_wait + batch_wait))

    async def patiently(
        self, call: Callable[[], Awaitable[T]], kind: str, queue_wait: float = 0.0, batch_wait: float = 0.0
    ) -> T:
        """Await `call()` within the deadlines (`deadline`): a stuck or dead server fails it with
        ModelUnavailableError, a busy one (it answers the status probe) is waited for. `call` sets
        `last_progress` when the server answers; its own errors propagate."""
        started = time.perf_counter()
        begun = time.monotonic()
        task = asyncio.ensure_future(call())
        try:
            while not task.done():
                deadline = self.deadline(begun, queue_wait, batch_wait)
                await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
                if task.done() or time.monotonic() < self.deadline(begun, queue_wait, batch_wait):
                    continue
                cap = begun + self.timeout + max(self.max_wait, queue_wait + batch_wait)
                if time.monotonic() >= cap or not await self._alive():
                    waited = time.monotonic() - begun
                    raise _unavailable(
                        f"The model server did not answer within {self.timeout:g}s (waited {waited:.1f}s).", 2
                    )
            return task.result()
        finally:
            if not task.done():
                task.cancel()
            if self.observe:
                self.observe(kind, time.perf_counter() - started)

    async def _request(
        self,
        method: str,
        url: str,
        kind: str,
        body: bytes | None = None,
        queue_wait: float = 0.0,
        batch_wait: float = 0.0,
    ) -> Reply:
        session, slots = self._client()
        headers = {"Content-Type": "application/json"} if body is not None else None

        async def call() -> Reply:
            async with slots:
                while True:
                    try:
                        async with session.request(method, url, data=body, headers=headers) as response:
                            reply = Reply(response.status, response.headers, await response.read())
                        break
                    except aiohttp.ConnectionTimeoutError:
                        # nothing was sent: a full listen queue, or this loop woke past the connect
                        # timer (a GC pause, a starved thread). Connect again; `patiently` keeps the
                        # deadline and asks whether the server lives, so a black hole still ends.
                        continue
            self.last_progress = time.monotonic()
            return reply

        try:
            reply = await self.patiently(call, kind, queue_wait, batch_wait)
        except (aiohttp.ClientError, OSError) as exc:
            raise _unavailable(
                f"The model server at {self.base_url} cannot be reached ({type(exc).__name__})."
            ) from None
        if reply.status_code in (429, 503) and "retry-after" in reply.headers:  # its queue is full
            error = QueueFullError(
                f"The model server is at capacity: {_error_text(reply)}",
                hint="The model server's queue is full; retry after Retry-After seconds.",
            )
            error.reason = "model_server_full"
            error.retry_after = _seconds(reply.headers["retry-after"])
            raise error
        if reply.status_code >= 500 or reply.status_code == 404:
            raise _unavailable(f"The model server answered {reply.status_code}: {_error_text(reply)}")
        return reply

    async def _alive(self) -> bool:
        """Whether the model server answers a status request within `timeout`: a busy one does (its
        batches run in a worker thread), a stuck or dead one does not. One probe for all waiting calls."""
        loop = asyncio.get_running_loop()
        probe = self._probes.get(id(loop))
        if probe is None or probe.done() or probe.get_loop() is not loop:
            probe = self._probes[id(loop)] = loop.create_task(self._probe_status())
        return await asyncio.shield(probe)

    async def _probe_status(self) -> bool:
        session, _ = self._client()
        try:
            async with asyncio.timeout(self.timeout), session.get(self.model_url) as response:
                await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
        self.last_progress = time.monotonic()
        return True

    async def status(self) -> dict[str, Any]:
        response = await self._request("GET", self.model_url, "status")
        if response.status_code != 200:
            raise _unavailable(f"The model server answered {response.status_code}: {_error_text(response)}")
        return response.json()

    async def metadata(self, version: str) -> dict[str, Any]:
        """TF Serving's metadata of `version` as its REST API answers it ({} if it does not say)."""
        response = await self._request("GET", f"{self.model_url}/versions/{version}/metadata", "metadata")
        return response.json() if response.status_code == 200 else {}

    def known_image_size(self) -> int | None:
        """The input size from the last info() (however old), without a request; None before any."""
        return self._info[1].image_size if self._info else None

    async def info(self, refresh: bool = False) -> ModelInfo:
        """The served version and its input size (cached for `info_ttl` seconds)."""
        now = time.monotonic()
        if not refresh and self._info and now - self._info[0] < self.info_ttl:
            return self._info[1]
        if self._info_lock is None:
            self._info_lock = asyncio.Lock()
        async with self._info_lock:
            if not refresh and self._info and time.monotonic() - self._info[0] < self.info_ttl:
                return self._info[1]
            status = await self.status()
            available = [
                int(s["version"])
                for s in status.get("model_version_status", [])
                if s.get("state") == "AVAILABLE" and str(s.get("version", "")).isdigit()
            ]
            if not available:
                raise _unavailable(f"Model {self.model_name!r} has no AVAILABLE version yet.", 2)
            version = str(max(available))
            if self._info and self._info[1].version == version:
                info = self._info[1]
            else:
                metadata = await self.metadata(version)
                info = ModelInfo(
                    version, image_size_from_metadata(metadata), (metadata.get("metadata") or {}).get("pizzactl") or {}
                )
            self._info = (time.monotonic(), info)
            return info

    async def route_version(self, route: str) -> str | None:
        """The version behind `/labels/<label>` or `/versions/<n>` (cached for `info_ttl` seconds):
        TF Serving's predict answer does not say which version made it, its status does."""
        now = time.monotonic()
        cached = self._route_versions.get(route)
        if cached and now - cached[0] < self.info_ttl:
            return cached[1]
        reply = await self._request("GET", self.model_url + route, "status")
        states = reply.json().get("model_version_status", []) if reply.status_code == 200 else []
        versions = [str(s.get("version")) for s in states if s.get("state") == "AVAILABLE"]
        if not versions:
            return None
        self._route_versions[route] = (now, versions[0])
        return versions[0]

    async def predict(
        self, images: list[bytes], queue_wait: float = 0.0, batch_wait: float = 0.0, route: str | None = None
    ) -> tuple[list[Prediction], str | None]:
        """Predictions for encoded images, and the version that made them (if the server says).

        `queue_wait`: the seconds the caller expects the queue ahead of these images to take;
        `batch_wait`: the seconds one batch of the model server takes (no answer comes meanwhile);
        `route`: `/labels/<label>` or `/versions/<n>` to ask one version (canary.py), else the latest."""
        body = binary_instances(images)
        url = f"{self.model_url}{route or ''}:predict"
        response = await self._request("POST", url, "predict", body, queue_wait, batch_wait)
        if response.status_code != 200:
            # The gateway re-encodes every image, so this is the model refusing one: not a 5xx.
            raise InvalidImageError(f"The model server rejected the image: {_error_text(response)}")
        try:
            rows = response.json()["predictions"]
            predictions = [
                Prediction(
                    str(r["label"]),
                    float(r["probability"]),
                    tuple(float(p) for p in r["probabilities"]) if "probabilities" in r else None,
                )
                for r in rows
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise _unavailable(
                f"The model server answered something that is not a pizzactl prediction ({exc})."
            ) from None
        if len(predictions) != len(images):
            raise _unavailable("The model server answered the wrong number of predictions.")
        version = response.headers.get("x-model-version")
        if version is None and route is not None:
            version = await self.route_version(route)
        return predictions, version


def _seconds(value: str) -> int:
    """A Retry-After in seconds (an HTTP date, which our servers never send, counts as 1)."""
    return max(1, int(value)) if value.strip().isdigit() else 1


def _error_text(response: Reply) -> str:
    try:
        return str(response.json().get("error", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]
