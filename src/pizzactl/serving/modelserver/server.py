"""The model server's state: which version it serves, hot reload from the models folder, and
the answers to TF Serving's status, metadata and predict calls.

Like TF Serving it serves the versions its policy picks under `MODELS/<name>/` (a version is what
`pizzactl.model.store.list_versions` says it is; by default the highest one, else what the model
config file says: `versions.py`) and polls that folder, swapping to a new version (or back to an
older one when the newest is deleted) without a restart. A request without a version gets the
highest loaded one; `/versions/<n>` and `/labels/<label>` pick another. A version
that fails to load is not retried until its directory changes.

The model config file is re-read on the same poll when it changes (TF Serving's
`--model_config_file_poll_wait_seconds`), with TF Serving's availability-preserving order: the
versions it adds are loaded before those it drops are unloaded, and a label moves only to a
loaded version (TF Serving refuses a label on a version that is not AVAILABLE: `server_core.cc`,
"labels can only be assigned to model versions that are already loaded"); until then it keeps
pointing where it did, and that version stays loaded. An unreadable new config is logged and
the old one stays. With no version yet it
answers 404 with a message naming the folder it watches.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pizzactl.config import Settings, view
from pizzactl.errors import BadInputError, ServableNotFoundError
from pizzactl.model.runtimes import SIGNATURE, LiteRTRuntime, Runtime, load_runtime, usable_cpus
from pizzactl.model.store import list_versions, model_base
from pizzactl.serving.admission import Admission, Throughput
from pizzactl.serving.modelserver import rest
from pizzactl.serving.modelserver.batching import Batcher
from pizzactl.serving.modelserver.versions import ModelConfigError, load_policy

log = logging.getLogger("pizzactl.modelserver")


@dataclass(frozen=True)
class ModelServerConfig:
    """What the model server needs: a view of `Settings` (PIZZACTL_* variables, pizzactl.toml, flags).

    No defaults here: every value comes from the setting of the same name, declared once in config.py."""

    models_dir: Path
    model_name: str
    max_batch_size: int
    batch_timeout_ms: float
    batch_threads: int
    poll_seconds: float
    tf_intra_op_threads: int
    tf_inter_op_threads: int
    litert_split: int
    model_runtime: str
    max_request_bytes: int
    queue_seconds: float
    max_queue: int
    model_config_file: Path | None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ModelServerConfig:
        return view(cls, settings, **overrides)

    @property
    def litert_threads(self) -> int:
        """LiteRT's interpreter threads: the intra-op setting if positive, else every usable CPU
        (int8 LiteRT on 2 threads served 16% more images/s end to end than on 1, benchmarks/RESULTS.md)."""
        return self.tf_intra_op_threads if self.tf_intra_op_threads > 0 else usable_cpus()

    @property
    def litert_interpreters(self) -> int:
        """One-thread LiteRT interpreters a batch of several images is split over (1: no split)."""
        return self.litert_split if self.litert_split > 0 else usable_cpus()

    @property
    def base_path(self) -> Path:
        return model_base(self.models_dir, self.model_name)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """(mtime_ns, size) of a file, to see it changed (a new config arrives by atomic rename)."""
    try:
        st = Path(path).stat() if path else None
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size) if st else None


def _status_entry(version: int, state: str, code: str = "OK", message: str = "") -> dict[str, Any]:
    return {"version": str(version), "state": state, "status": {"error_code": code, "error_message": message}}


class ModelServer:
    """Holds the loaded versions, watches the folder, and batches predictions."""

    def __init__(self, config: ModelServerConfig):
        self.config = config
        self.policy = load_policy(config.model_config_file, config.model_name)
        self._config_seen = _stamp(config.model_config_file)
        self.labels: dict[str, int] = dict(self.policy.labels)  # where each label points now (see _move_labels)
        self.models: dict[int, Runtime] = {}  # loaded versions (replaced whole, never mutated: readers copy nothing)
        self.loading: int | None = None
        self.failed: dict[int, str] = {}  # version -> load error (not retried until it changes)
        self._failed_mtime: dict[int, float] = {}
        self._lock = threading.Lock()
        self.meter = Throughput()
        self.batcher = Batcher(
            self._run_batch, config.max_batch_size, config.batch_timeout_ms / 1000, config.batch_threads, self.meter
        )
        # A full queue answers 503 at once (TF Serving's UNAVAILABLE "batch scheduling queue is full");
        # one client (the gateway) is the usual caller here, so no per-client 429.
        self.admission = Admission(
            config.queue_seconds,
            config.max_queue,
            self.meter,
            per_client=False,
            min_queue=2 * config.max_batch_size * config.batch_threads,
        )
        self._watcher: asyncio.Task | None = None

    @property
    def model(self) -> Runtime | None:
        """The version a request without one gets: the highest loaded (TF Serving's `Latest`)."""
        models = self.models
        return models[max(models)] if models else None

    # --- model lifecycle

    def _run_batch(self, items: list) -> list:
        """`items` are (version, image): one batch may mix versions, each runs on its own model.

        Version None is the highest loaded when the batch runs, so a hot swap fails no queued request."""
        models = self.models
        latest = max(models) if models else None
        wanted = [latest if v is None else v for v, _ in items]
        results: list = [None] * len(items)
        for version in sorted({v for v in wanted if v is not None}) + ([None] if None in wanted else []):
            model = models.get(version) if version is not None else None
            if model is None:
                if version is None:
                    raise ServableNotFoundError(self.not_found_message())
                name = self.config.model_name
                raise ServableNotFoundError(f"Servable not found for request: Specific({name}, {version})")
            at = [i for i, v in enumerate(wanted) if v == version]
            name = model.input_names(SIGNATURE)[0]
            outputs = model.run(SIGNATURE, {name: [items[i][1] for i in at]})
            keys = sorted(outputs)
            for j, i in enumerate(at):
                results[i] = ({k: outputs[k][j] for k in keys}, version)
        return results

    def poll_once(self) -> None:
        """Load the versions the policy picks among those on disk, unload the others (blocking)."""
        self._reload_config()
        versions = dict(list_versions(self.config.models_dir, self.config.model_name))
        if not versions:
            if self.models:
                log.warning("no versions left under %s: unloading %s", self.config.base_path, sorted(self.models))
                self.models = {}
            return
        candidates = [v for v, path in versions.items() if v not in self.failed or self._changed(v, path)]
        wanted = self.policy.select(candidates)
        for target in wanted:
            if target not in self.models:
                self._load(target, versions[target])
        self._move_labels()
        gone = [v for v in self.models if v not in wanted and v not in self.labels.values()]
        if gone and any(v in self.models for v in wanted):
            self.models = {v: m for v, m in self.models.items() if v not in gone}
            log.info("unloaded %s version%s %s", self.config.model_name, "s" * (len(gone) > 1), sorted(gone))

    def _reload_config(self) -> None:
        """A changed model config file becomes the policy; one that cannot be read leaves the old one."""
        path = self.config.model_config_file
        stamp = _stamp(path)
        if path is None or stamp is None or stamp == self._config_seen:
            return
        self._config_seen = stamp
        try:
            policy = load_policy(path, self.config.model_name)
        except ModelConfigError as exc:
            log.error("kept the model config in use: the new %s cannot be used: %s", path, exc.message)
            return
        if policy != self.policy:
            log.info("model config %s changed: %s, labels %s", path, policy.describe(), dict(policy.labels))
            self.policy = policy

    def _move_labels(self) -> None:
        """Each label of the policy to its version once that is loaded; until then where it pointed before."""
        models, before = self.models, self.labels
        labels = {}
        for label, version in self.policy.labels.items():
            kept = before.get(label)
            labels[label] = kept if version not in models and kept in models and kept is not None else version
        if labels != before:
            log.info("version labels: %s", labels)
            self.labels = labels

    def _load(self, target: int, path: Path) -> None:
        self.loading = target
        log.info("loading %s version %s from %s", self.config.model_name, target, path)
        started = time.perf_counter()
        try:
            model = load_runtime(
                path, target, self.config.model_runtime, self.config.litert_threads, self.config.litert_interpreters
            )
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
            old = self.model
            self.models = {**self.models, target: model}
        log.info(
            "serving %s version %s on %s (%.1fs to load)%s",
            self.config.model_name,
            target,
            f"{model.name}, {model.threads} thread{'s' * (model.threads != 1)}"
            + (f", batches split over {model.split} one-thread interpreters" if model.split > 1 else "")
            if isinstance(model, LiteRTRuntime)
            else model.name,
            time.perf_counter() - started,
            f", beside version {old.version}" if old and old.version != target else "",
        )

    def _changed(self, version: int, path: Path) -> bool:
        return _mtime(path) != self._failed_mtime.get(version)

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

    def resolve(self, name: str, label: str) -> int:
        """The version a label points to (TF Serving: an unknown label is NOT_FOUND, 404)."""
        if name != self.config.model_name:
            raise ServableNotFoundError(f"Servable not found for request: Latest({name})")
        labels = self.labels
        if label not in labels:
            raise ServableNotFoundError(f"Unrecognized servable version label: {label}")
        return labels[label]

    def servable(self, name: str, version: int | None, label: str | None = None) -> Runtime:
        if label is not None:
            version = self.resolve(name, label)
        if name != self.config.model_name:
            raise ServableNotFoundError(f"Servable not found for request: Latest({name})")
        model = self.model if version is None else self.models.get(version)
        if model is None and version is None:
            raise ServableNotFoundError(self.not_found_message())
        if model is None:
            raise ServableNotFoundError(f"Servable not found for request: Specific({name}, {version})")
        return model

    # --- TF Serving's calls

    def status(self, name: str, version: int | None, label: str | None = None) -> dict[str, Any]:
        if label is not None:
            version = self.resolve(name, label)
        if name != self.config.model_name:
            raise ServableNotFoundError(f"Could not find any versions of model {name}")
        entries = []
        models = self.models
        for v in sorted(models, reverse=True):
            if version in (None, v):
                entries.append(_status_entry(v, "AVAILABLE"))
        if self.loading is not None and version in (None, self.loading):
            entries.append(_status_entry(self.loading, "LOADING"))
        for v, message in sorted(self.failed.items(), reverse=True):
            if version in (None, v) and v not in models:
                entries.append(_status_entry(v, "END", "UNKNOWN", message))
        if not entries:
            if version is not None:
                raise ServableNotFoundError(f"Could not find version {version} of model {name}")
            raise ServableNotFoundError(self.not_found_message())
        return {"model_version_status": entries}

    def metadata(self, name: str, version: int | None, label: str | None = None) -> dict[str, Any]:
        model = self.servable(name, version, label)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
            "metadata": {
                "signature_def": {"signature_def": model.signature_def},
                "pizzactl": model.card.to_dict() if model.card else {},
                "runtime": model.name,  # not TF Serving's: which engine answers (pizzactl.model.litert)
            },
        }

    async def predict(
        self, name: str, version: int | None, body: dict[str, Any], label: str | None = None
    ) -> tuple[dict[str, Any], int]:
        """A predict request -> (TF Serving's answer, the version that made it).

        `serving_default` goes through the batcher (concurrent requests share a batch); other
        signatures run on their own.
        """
        model = self.servable(name, version, label)
        signature = body.get("signature_name") or SIGNATURE
        if not isinstance(signature, str) or signature not in model.signature_def:
            raise BadInputError(f'Serving signature name: "{signature}" not found in signature def')
        input_names = model.input_names(signature)
        inputs, columnar = rest.parse_request(body, input_names)
        with self.admission.admit(max(len(v) for v in inputs.values())):
            if signature == SIGNATURE and len(input_names) == 1:
                pinned = None if version is None and label is None else model.version  # None: the latest at run time
                results = await self.batcher.submit([(pinned, item) for item in inputs[input_names[0]]])
                used = results[0][1] if results else model.version
                rows = [r[0] for r in results]
                keys = sorted(rows[0]) if rows else sorted(model.signature_def[signature]["outputs"])
                outputs = {k: [row[k] for row in rows] for k in keys}
            else:
                outputs = await asyncio.to_thread(model.run, signature, inputs)
                used = model.version
        return rest.answer(outputs, columnar), used
