"""A small TF Serving look-alike: the SavedModel behind TF Serving's REST API, in one process.

What the gateway (or any TF Serving client) sees is the same as with the tensorflow/serving
image: `GET /v1/models/<name>`, `GET /v1/models/<name>/metadata`,
`POST /v1/models/<name>[/versions/N]:predict` with row (`instances`) or columnar (`inputs`)
requests, and errors as `{"error": "..."}`. Like TF Serving it

* serves the highest version under `MODELS/<name>/` and polls that folder, swapping to a new
  version (or back to an older one when the newest is deleted) without a restart;
* batches concurrent requests on the server (`--enable_batching`): requests that queue while
  the worker is busy (or arrive within `batch_timeout`) are run as one batch of at most
  `max_batch_size` images, in a worker thread, and the results are fanned back out;
* starts even when no model exists yet: it answers 404 with a message naming the folder it
  watches and picks the model up as soon as `pizzactl export` publishes one.

It is a bare Starlette app on uvicorn (uvloop + httptools) with stdlib JSON: no request
models or OpenAPI to pay for on the hot path, since its API is TF Serving's, not ours.
TensorFlow is imported only when a model is loaded, so `--help` is instant. Run it with
`python -m pizzactl.serving.modelserver --models models --port 8501`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pizzactl.config import MODEL_NAME, MODEL_PORT, Settings, load_settings, server_settings, view

log = logging.getLogger("pizzactl.modelserver")

DEFAULT_MAX_BATCH_SIZE = Settings.max_batch_size
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
SIGNATURE = "serving_default"
METADATA_FILE = Path("assets.extra") / "pizzactl.json"


class ServingError(Exception):
    """An error answered as TF Serving does: `{"error": message}` with an HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


# --- versions on disk -----------------------------------------------------------------------


def list_versions(base: Path) -> list[int]:
    """Version numbers under `base` that hold a SavedModel (ignores temp dirs of an export)."""
    try:
        entries = list(base.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    versions = []
    for entry in entries:
        if entry.name.isdigit() and (entry / "saved_model.pb").is_file():
            versions.append(int(entry.name))
    return sorted(versions)


# --- the loaded model -----------------------------------------------------------------------


def _dtype_name(dtype) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype.as_datatype_enum)


def _tensor_info(name: str, spec) -> dict[str, Any]:
    shape = spec.shape
    if shape.rank is None:
        tensor_shape: dict[str, Any] = {"dim": [], "unknown_rank": True}
    else:
        dims = [{"size": str(-1 if d is None else d), "name": ""} for d in shape.as_list()]
        tensor_shape = {"dim": dims, "unknown_rank": False}
    return {"dtype": _dtype_name(spec.dtype), "tensor_shape": tensor_shape, "name": name}


@dataclass
class LoadedModel:
    """One loaded version: its signatures, TF Serving-shaped signature_def and pizzactl.json."""

    version: int
    path: Path
    signatures: dict[str, Any]
    signature_def: dict[str, Any]
    pizzactl: dict[str, Any]
    _keep: Any = field(default=None, repr=False)  # the loaded object owns the variables

    @classmethod
    def load(cls, path: Path, version: int) -> LoadedModel:
        import tensorflow as tf

        obj = tf.saved_model.load(str(path))
        signatures = dict(obj.signatures)
        if SIGNATURE not in signatures:
            raise ServingError(f"{path} has no {SIGNATURE!r} signature (it has {sorted(signatures)}).", 500)
        signature_def = {}
        for name, fn in signatures.items():
            _, kwargs = fn.structured_input_signature
            inputs = {k: _tensor_info(f"{name}_{k}:0", spec) for k, spec in kwargs.items()}
            outputs = {
                k: _tensor_info(f"StatefulPartitionedCall:{i}", spec)
                for i, (k, spec) in enumerate(sorted(fn.structured_outputs.items()))
            }
            signature_def[name] = {"inputs": inputs, "outputs": outputs, "method_name": "tensorflow/serving/predict"}
        meta_path = path / METADATA_FILE
        try:
            pizzactl = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            pizzactl = {}
        return cls(version, path, signatures, signature_def, pizzactl, _keep=obj)

    def input_names(self, signature: str) -> list[str]:
        return list(self.signature_def[signature]["inputs"])

    def run(self, signature: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run one signature on a batch; returns numpy arrays. Raises ServingError on bad input."""
        import tensorflow as tf

        fn = self.signatures[signature]
        _, specs = fn.structured_input_signature
        feed = {}
        for name, value in inputs.items():
            spec = specs[name]
            try:
                feed[name] = tf.constant(value, dtype=spec.dtype)
            except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
                raise ServingError(f"Input {name!r} cannot be converted to {spec.dtype.name}: {exc}") from None
        try:
            outputs = fn(**feed)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            raise ServingError(_tf_message(exc)) from None
        return {k: v.numpy() for k, v in outputs.items()}

    def warm_up(self) -> None:
        """One real prediction so the first user request does not pay for tracing."""
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 120, 40)).save(buf, "JPEG")
        name = self.input_names(SIGNATURE)[0]
        self.run(SIGNATURE, {name: [buf.getvalue()]})


# --- server-side batching -------------------------------------------------------------------


@dataclass
class _Pending:
    items: list
    future: asyncio.Future
    enqueued: float


class Batcher:
    """Combine concurrent requests into batches, like TF Serving's `--enable_batching`.

    `run(items) -> list of per-item results` runs in a worker thread. A batch is formed when a
    worker is free, from every request waiting by then (plus those arriving within `timeout`
    seconds): an idle server answers a lone request at once, a busy one runs large batches. A
    batch never exceeds
    `max_batch_size` items (bigger requests are split). If a combined batch fails (one
    request's bad image), each request is rerun alone so only the culprit gets the error.
    """

    def __init__(
        self,
        run: Callable[[list], Sequence],
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        timeout: float = 0.0,
        threads: int = 1,
    ):
        self.run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self.timeout = max(0.0, float(timeout))
        self.threads = max(1, int(threads))
        self.batch_sizes: list[int] = []  # recent batch sizes, for metrics and tests
        self.on_batch: Callable[[int, float], None] | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="pizzactl-batch")
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()  # batches in flight (the loop keeps only weak references)

    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._slots = asyncio.Semaphore(self.threads)
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list) -> list:
        """Results for `items`, in order, computed in some batch."""
        if not items:
            return []
        self.start()
        if len(items) > self.max_batch_size:
            size = self.max_batch_size
            parts = await asyncio.gather(*(self.submit(items[i : i + size]) for i in range(0, len(items), size)))
            return [r for part in parts for r in part]
        loop = asyncio.get_running_loop()
        pending = _Pending(list(items), loop.create_future(), loop.time())
        assert self._queue is not None
        await self._queue.put(pending)
        return await pending.future

    async def _loop(self) -> None:
        assert self._queue is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        held: _Pending | None = None
        while True:
            first = held if held is not None else await self._queue.get()
            held = None
            # Wait for a free worker *before* forming the batch: while every worker is busy the
            # requests pile up in the queue, so the next batch takes all of them (TF Serving's
            # behaviour). An idle server runs a lone request at once, plus whatever joins within
            # `timeout` (0 by default: no waiting when nobody else is there).
            await self._slots.acquire()
            batch, size = [first], len(first.items)
            deadline = loop.time() + self.timeout
            while size < self.max_batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if size + len(nxt.items) > self.max_batch_size:
                    held = nxt  # starts the next batch
                    break
                batch.append(nxt)
                size += len(nxt.items)
            task = loop.create_task(self._dispatch(batch, size))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch(self, batch: list[_Pending], size: int) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        try:
            batch = [p for p in batch if not p.future.done()]  # client went away
            if not batch:
                return
            items = [item for p in batch for item in p.items]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run, items)
            except Exception as exc:
                if len(batch) == 1:
                    if not batch[0].future.done():
                        batch[0].future.set_exception(exc)
                    return
                for p in batch:  # isolate the request that broke the batch
                    try:
                        result = await loop.run_in_executor(self._executor, self.run, p.items)
                    except Exception as single_exc:
                        if not p.future.done():
                            p.future.set_exception(single_exc)
                    else:
                        if not p.future.done():
                            p.future.set_result(list(result))
                return
            self.batch_sizes.append(len(items))
            del self.batch_sizes[:-1000]
            if self.on_batch:
                self.on_batch(len(items), time.perf_counter() - started)
            offset = 0
            for p in batch:
                n = len(p.items)
                if not p.future.done():
                    p.future.set_result(list(results[offset : offset + n]))
                offset += n
        finally:
            self._slots.release()


# --- the server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelServerConfig:
    """What the model server needs: a view of `Settings` (PIZZACTL_* variables, pizzactl.toml, flags)."""

    models_dir: Path
    model_name: str
    max_batch_size: int
    batch_timeout_ms: float
    batch_threads: int
    poll_seconds: float
    tf_intra_op_threads: int
    tf_inter_op_threads: int
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ModelServerConfig:
        return view(cls, settings, **overrides)

    @property
    def base_path(self) -> Path:
        return Path(self.models_dir) / self.model_name


class ModelServer:
    """Holds the current model, watches the folder, and batches predictions."""

    def __init__(self, config: ModelServerConfig):
        self.config = config
        self.model: LoadedModel | None = None
        self.loading: int | None = None
        self.failed: dict[int, str] = {}  # version -> load error (not retried until it changes)
        self._failed_mtime: dict[int, float] = {}
        self._lock = threading.Lock()
        self.batcher = Batcher(
            self._run_batch, config.max_batch_size, config.batch_timeout_ms / 1000, config.batch_threads
        )
        self._watcher: asyncio.Task | None = None
        self.metrics = _Metrics()
        self.batcher.on_batch = self.metrics.observe_batch

    # model lifecycle

    def _run_batch(self, items: list) -> list:
        model = self.model
        if model is None:
            raise ServingError(self.not_found_message(), 404)
        name = model.input_names(SIGNATURE)[0]
        outputs = model.run(SIGNATURE, {name: items})
        keys = sorted(outputs)
        return [({k: outputs[k][i] for k in keys}, model.version) for i in range(len(items))]

    def poll_once(self) -> None:
        """Load the highest version on disk if it is not the one being served (blocking)."""
        versions = list_versions(self.config.base_path)
        if not versions:
            if self.model is not None:
                log.warning(
                    "no versions left under %s: unloading version %s", self.config.base_path, self.model.version
                )
                self.model = None
            return
        candidates = [v for v in versions if v not in self.failed or self._changed(v)]
        if not candidates:
            return
        target = max(candidates)
        if self.model is not None and self.model.version == target:
            return
        path = self.config.base_path / str(target)
        self.loading = target
        log.info("loading %s version %s from %s", self.config.model_name, target, path)
        started = time.perf_counter()
        try:
            model = LoadedModel.load(path, target)
            model.warm_up()
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            log.error("could not load %s: %s", path, message)
            self.failed[target] = message
            self._failed_mtime[target] = _mtime(path)
            return
        finally:
            self.loading = None
        self.failed.pop(target, None)
        with self._lock:
            old, self.model = self.model, model
        log.info(
            "serving %s version %s (%.1fs to load)%s",
            self.config.model_name,
            target,
            time.perf_counter() - started,
            f", replacing version {old.version}" if old else "",
        )

    def _changed(self, version: int) -> bool:
        return _mtime(self.config.base_path / str(version)) != self._failed_mtime.get(version)

    async def watch(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.poll_once)
            except Exception:
                log.exception("model poll failed")
            await asyncio.sleep(self.config.poll_seconds)

    async def startup(self) -> None:
        self.batcher.start()
        self._watcher = asyncio.get_running_loop().create_task(self.watch())

    async def shutdown(self) -> None:
        if self._watcher:
            self._watcher.cancel()
        await self.batcher.stop()

    def not_found_message(self) -> str:
        name, base = self.config.model_name, self.config.base_path
        if self.loading is not None:
            return f"Servable not found for request: Latest({name}): version {self.loading} is still loading."
        if self.failed:
            version = max(self.failed)
            return f"Servable not found for request: Latest({name}): version {version} failed to load: {self.failed[version]}"
        return (
            f"Servable not found for request: Latest({name}): no versions of model {name} found under {base}. "
            "Export one with `pizzactl export` (or `pizzactl train`); it is picked up without a restart."
        )

    def servable(self, name: str, version: int | None) -> LoadedModel:
        if name != self.config.model_name:
            raise ServingError(f"Servable not found for request: Latest({name})", 404)
        model = self.model
        if model is None:
            raise ServingError(self.not_found_message(), 404)
        if version is not None and version != model.version:
            raise ServingError(f"Servable not found for request: Specific({name}, {version})", 404)
        return model

    # HTTP handlers

    def status(self, name: str, version: int | None) -> dict[str, Any]:
        if name != self.config.model_name:
            raise ServingError(f"Could not find any versions of model {name}", 404)
        entries = []
        model = self.model
        if model is not None and version in (None, model.version):
            entries.append(_status_entry(model.version, "AVAILABLE"))
        if self.loading is not None and version in (None, self.loading):
            entries.append(_status_entry(self.loading, "LOADING"))
        for v, message in sorted(self.failed.items(), reverse=True):
            if version in (None, v) and (model is None or v != model.version):
                entries.append(_status_entry(v, "END", "UNKNOWN", message))
        if not entries:
            if version is not None:
                raise ServingError(f"Could not find version {version} of model {name}", 404)
            raise ServingError(self.not_found_message(), 404)
        return {"model_version_status": entries}

    def metadata(self, name: str, version: int | None) -> dict[str, Any]:
        model = self.servable(name, version)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": model.signature_def}, "pizzactl": model.pizzactl},
        }

    async def predict(self, name: str, version: int | None, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        model = self.servable(name, version)
        signature = body.get("signature_name") or SIGNATURE
        if not isinstance(signature, str) or signature not in model.signature_def:
            raise ServingError(f'Serving signature name: "{signature}" not found in signature def')
        input_names = model.input_names(signature)
        columnar = "inputs" in body
        if columnar == ("instances" in body):
            raise ServingError(
                "Missing 'inputs' or 'instances' key"
                if not columnar
                else "Request has both 'inputs' and 'instances' keys"
            )
        inputs = (
            _columnar_inputs(body["inputs"], input_names) if columnar else _row_inputs(body["instances"], input_names)
        )
        if signature == SIGNATURE and len(input_names) == 1:
            results = await self.batcher.submit(inputs[input_names[0]])
            used = results[0][1] if results else model.version
            rows = [r[0] for r in results]
            keys = sorted(rows[0]) if rows else sorted(model.signature_def[signature]["outputs"])
            outputs = {k: [row[k] for row in rows] for k in keys}
        else:
            outputs = await asyncio.to_thread(model.run, signature, inputs)
            keys = sorted(outputs)
            used = model.version
        if columnar:
            cols = {k: [_jsonable(v) for v in outputs[k]] for k in keys}
            return ({"outputs": cols[keys[0]]} if len(keys) == 1 else {"outputs": cols}), used
        n = len(outputs[keys[0]]) if keys else 0
        if len(keys) == 1:
            return {"predictions": [_jsonable(v) for v in outputs[keys[0]]]}, used
        return {"predictions": [{k: _jsonable(outputs[k][i]) for k in keys} for i in range(n)]}, used


def _tf_message(exc: Exception) -> str:
    """The useful line of a TF error ("Unknown image file format ..."), not the graph noise."""
    text = getattr(exc, "message", None) or str(exc) or repr(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    noise = ("Graph execution error", "Detected at node", "[[", "File ", "Traceback", "}}")
    useful = [line for line in lines if not line.startswith(noise)]
    return (useful or lines or [repr(exc)])[0][:500]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _status_entry(version: int, state: str, code: str = "OK", message: str = "") -> dict[str, Any]:
    return {"version": str(version), "state": state, "status": {"error_code": code, "error_message": message}}


def _decode_value(value: Any) -> Any:
    """TF Serving's JSON: {"b64": "..."} is binary; lists are tensors; scalars stay scalars."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            text = value["b64"]
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                if re.fullmatch(r"[A-Za-z0-9_\-]*={0,2}", text):
                    try:
                        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
                    except (binascii.Error, ValueError):
                        pass
                raise ServingError("Unable to base64 decode") from None
        raise ServingError(f"Unexpected object in a tensor value: keys {sorted(value)[:5]}")
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    return value


def _row_inputs(instances: Any, names: list[str]) -> dict[str, list]:
    if not isinstance(instances, list):
        raise ServingError("'instances' must be a list")
    if not instances:
        raise ServingError("'instances' is empty")
    single = len(names) == 1
    named = all(isinstance(i, dict) and set(i) != {"b64"} for i in instances)
    columns: dict[str, list] = {n: [] for n in names}
    for instance in instances:
        if named:
            missing = [n for n in names if n not in instance]
            extra = [k for k in instance if k not in columns]
            if missing or extra:
                raise ServingError(f"instance has keys {sorted(instance)}; the signature takes {names}")
            for n in names:
                columns[n].append(_decode_value(instance[n]))
        elif single:
            columns[names[0]].append(_decode_value(instance))
        else:
            raise ServingError(f"The signature takes several inputs {names}: each instance must be an object")
    return columns


def _columnar_inputs(inputs: Any, names: list[str]) -> dict[str, list]:
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        if sorted(inputs) != sorted(names):
            raise ServingError(f"'inputs' has keys {sorted(inputs)}; the signature takes {names}")
        columns = {n: _decode_value(inputs[n]) for n in names}
    elif len(names) == 1:
        columns = {names[0]: _decode_value(inputs)}
    else:
        raise ServingError(f"The signature takes several inputs {names}: 'inputs' must be an object")
    for n, v in columns.items():
        if not isinstance(v, list):
            columns[n] = [v]
        if not columns[n]:
            raise ServingError(f"input {n!r} is empty")
    return columns


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.floating):
        return float(f"{float(value):.7g}")
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class _Metrics:
    """Prometheus counters, on their own registry (several servers may live in one test process)."""

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

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<rest>/metadata|:predict|:classify|:regress)?$"
)


def create_app(
    models_dir: Path | str | None = None, config: ModelServerConfig | None = None, **overrides: Any
) -> Starlette:
    """The model server as an ASGI app (the watcher and batcher start with the app's lifespan).

    Without `config`, the settings (PIZZACTL_* variables, pizzactl.toml) and `overrides` decide.
    """
    if config is None:
        config = ModelServerConfig.from_settings(load_settings(), models_dir=models_dir, **overrides)
    server = ModelServer(config)

    async def models(request: Request) -> Response:
        match = _PATH.match(request.url.path)
        route = "other"
        try:
            if not match:
                raise ServingError(f"Malformed request: {request.method} {request.url.path}", 404)
            name, version_text, rest = match["name"], match["version"], match["rest"] or ""
            route = {"": "status", "/metadata": "metadata"}.get(rest, rest.lstrip(":"))
            version = None
            if version_text is not None:
                if not version_text.isdigit():
                    raise ServingError(f"Malformed request: version {version_text!r} is not a number", 404)
                version = int(version_text)
            if rest in ("", "/metadata"):
                if request.method != "GET":
                    raise ServingError(f"Malformed request: {request.method} {request.url.path}", 405)
                body = server.status(name, version) if rest == "" else server.metadata(name, version)
                response = JSONResponse(body)
            elif rest == ":predict":
                if request.method != "POST":
                    raise ServingError(f"Malformed request: {request.method} {request.url.path}", 405)
                length = request.headers.get("content-length")
                if length and length.isdigit() and int(length) > config.max_request_bytes:
                    raise ServingError(f"Request body larger than {config.max_request_bytes} bytes", 413)
                raw = await request.body()
                try:
                    payload = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ServingError(f"JSON Parse error: {exc}") from None
                if not isinstance(payload, dict):
                    raise ServingError("JSON Value: request must be a JSON object")
                body, used = await server.predict(name, version, payload)
                response = JSONResponse(body, headers={"X-Model-Version": str(used)})
            else:
                raise ServingError(f"{rest.lstrip(':')} is not supported by this server (use :predict)", 400)
        except ServingError as exc:
            response = JSONResponse({"error": exc.message}, status_code=exc.status)
        server.metrics.http.labels(route, str(response.status_code)).inc()
        return response

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request) -> Response:
        return JSONResponse({"error": f"Malformed request: {request.method} {request.url.path}"}, status_code=404)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await server.startup()
        try:
            yield
        finally:
            await server.shutdown()

    app = Starlette(
        routes=[
            Route("/v1/models/{rest:path}", models, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            Route("/monitoring/prometheus/metrics", prometheus),
            Route("/{rest:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
        ],
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def default_tf_threads() -> tuple[int, int]:
    """(intra-op, inter-op) threads for serving: half the CPUs per op, one op at a time.

    TF's default (every core for every op, and as many ops at once) makes its threads fight
    the gateway's image decoding and each other: on 2 shared cores a MobileNetV3 ran 113
    images/s with the defaults and 142 with (1, 1), at 20% less CPU per image. More batches
    in parallel is what `--batch-threads` is for.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2), 1


def configure_tf_threads(intra: int | None = None, inter: int | None = None) -> tuple[int, int]:
    """Apply thread counts (0 = TensorFlow's own default) before TF runs anything; returns them."""
    default_intra, default_inter = default_tf_threads()
    intra = default_intra if intra is None or intra < 0 else intra
    inter = default_inter if inter is None or inter < 0 else inter
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already initialised in this process: keep what it has
        log.warning("TensorFlow is already initialised; thread settings unchanged")
    return intra, inter


def main(argv: Sequence[str] | None = None) -> None:
    """Flags override the PIZZACTL_* variables and pizzactl.toml (see `pizzactl config show`)."""
    parser = argparse.ArgumentParser(
        prog="python -m pizzactl.serving.modelserver",
        description="TF Serving-compatible REST model server for pizzactl SavedModels (with batching and hot reload).",
    )
    parser.add_argument(
        "--models", dest="models_dir", help="Models directory holding <name>/<version>/ (env PIZZACTL_MODELS_DIR)."
    )
    parser.add_argument("--model-name", help=f"Model name (env PIZZACTL_MODEL_NAME, default {MODEL_NAME}).")
    parser.add_argument("--host", help="Address to listen on (env PIZZACTL_HOST, default 127.0.0.1).")
    parser.add_argument(
        "--port", dest="model_port", type=int, help=f"Port (env PIZZACTL_MODEL_PORT, default {MODEL_PORT})."
    )
    parser.add_argument(
        "--max-batch-size", type=int, help="Images per server-side batch (env PIZZACTL_MAX_BATCH_SIZE, default 32)."
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        help="How long a free worker waits for more requests to join a batch; 0 (default) runs at once, a busy worker batches anyway (env PIZZACTL_BATCH_TIMEOUT_MS).",
    )
    parser.add_argument("--batch-threads", type=int, help="Batches run at the same time (env PIZZACTL_BATCH_THREADS).")
    parser.add_argument(
        "--poll-seconds", type=float, help="How often to look for new versions (env PIZZACTL_POLL_SECONDS)."
    )
    parser.add_argument(
        "--intra-op-threads",
        dest="tf_intra_op_threads",
        type=int,
        help="TensorFlow threads per op; -1 (default) = half the CPUs, 0 = TF's default (env PIZZACTL_TF_INTRA_OP_THREADS).",
    )
    parser.add_argument(
        "--inter-op-threads",
        dest="tf_inter_op_threads",
        type=int,
        help="TensorFlow ops run at once; -1 (default) = 1, 0 = TF's default (env PIZZACTL_TF_INTER_OP_THREADS).",
    )
    parser.add_argument("--log-level", help="Log level (env PIZZACTL_LOG_LEVEL, default info).")
    settings = server_settings(vars(parser.parse_args(argv)))
    config = ModelServerConfig.from_settings(settings)

    import uvicorn

    level = settings.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if level.lower() != "debug":
        from pizzactl.tfimport import import_quietly

        import_quietly()  # TF's start-up INFO lines are not the model server's log
    intra, inter = configure_tf_threads(config.tf_intra_op_threads, config.tf_inter_op_threads)
    log.info("TensorFlow threads: %s intra-op, %s inter-op", intra or "default", inter or "default")
    uvicorn.run(
        create_app(config=config),
        host=settings.host,
        port=settings.model_port,
        log_level=level.lower(),
        access_log=False,
        loop="auto",
        http="auto",  # auto = uvloop + httptools, installed with uvicorn[standard]
    )


if __name__ == "__main__":
    main()
