"""Live evidence for a rollout: what each version answered, and how two versions compare on the same images.

The gateway records every model-server call it makes (the user's and the background one of
shadow/canary comparison: rollout.py) here. Counters are since the gateway started; latency
and |Δp| percentiles come from bounded reservoirs of the most recent values (exact over the
last `RESERVOIR` calls, not bucket-interpolated), so `GET /rollout` reads numbers a person
and `pizzactl promote --auto` can trust. The same numbers go to Prometheus, labelled by
version and role; version keys are capped (`MAX_VERSIONS`), so label cardinality stays bounded.

`Disagreements` keeps the wire JPEGs two versions labelled differently, with both answers,
for a person to look at: the newest `keep` of them, written from the background task only.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pizzactl.serving.client import Prediction

RESERVOIR = 2048  # recent values kept per version (latency) and for the comparison (|Δp|)
MAX_VERSIONS = 8  # version keys; more (a long-lived gateway through many rollouts) fold into "other"
ROLES = ("stable", "candidate")

log = logging.getLogger("pizzactl.gateway")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0 < q <= 1) of `values`; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def abs_dp(a: Prediction, b: Prediction) -> float:
    """How far two answers for one image are: max |Δ| over the class probabilities (|Δp| without them)."""
    if a.probabilities is not None and b.probabilities is not None and len(a.probabilities) == len(b.probabilities):
        return max((abs(x - y) for x, y in zip(a.probabilities, b.probabilities, strict=True)), default=0.0)
    return abs(a.probability - b.probability)


@dataclass
class VersionStats:
    role: str
    requests: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        self.latency: deque[float] = deque(maxlen=RESERVOIR)  # seconds
        self.labels: Counter[str] = Counter()

    def as_json(self) -> dict[str, Any]:
        latency = list(self.latency)
        p50, p99 = percentile(latency, 0.5), percentile(latency, 0.99)
        return {
            "role": self.role,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "latency_ms": {
                "p50": None if p50 is None else round(p50 * 1000, 3),
                "p99": None if p99 is None else round(p99 * 1000, 3),
            },
            "labels": dict(self.labels),
        }


class PromMetrics:
    """The rollout's Prometheus series on the gateway's registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter as PCounter
        from prometheus_client import Histogram

        by = ["version", "role"]
        self.requests = PCounter(
            "pizzactl_gateway_version_requests",
            "Model-server calls per version (user and shadow)",
            by,
            registry=registry,
        )
        self.errors = PCounter(
            "pizzactl_gateway_version_errors", "Model-server calls per version that failed", by, registry=registry
        )
        self.latency = Histogram(
            "pizzactl_gateway_version_duration_seconds",
            "Model-server call latency per version",
            by,
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
        )
        self.labels = PCounter(
            "pizzactl_gateway_version_images",
            "Images per version and the label it gave",
            [*by, "label"],
            registry=registry,
        )
        self.pairs = PCounter("pizzactl_gateway_comparison_pairs", "Images both versions answered", registry=registry)
        self.agreements = PCounter(
            "pizzactl_gateway_comparison_agreements", "Images both versions gave the same label", registry=registry
        )
        self.abs_dp = Histogram(
            "pizzactl_gateway_comparison_abs_dp",
            "max |Δ| over the class probabilities of the two versions' answers to one image",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
        )
        self.skipped = PCounter(
            "pizzactl_gateway_shadow_skipped",
            "Comparison calls not made: in_flight (the bound was reached), queue (the gateway's queue was "
            "more than half full)",
            ["reason"],
            registry=registry,
        )
        for reason in ("in_flight", "queue"):
            self.skipped.labels(reason)


class RolloutStats:
    """Per-version calls and the comparison of two versions; thread-safe (cheap: one lock, no I/O)."""

    def __init__(self, registry: Any = None) -> None:
        self._lock = threading.Lock()
        self.versions: dict[str, VersionStats] = {}
        self.pairs = 0
        self.agreements = 0
        self.dp: deque[float] = deque(maxlen=RESERVOIR)
        self.dp_max: float | None = None
        self.skipped: Counter[str] = Counter()
        self.fallbacks = 0
        self.prom = PromMetrics(registry) if registry is not None else None

    def fresh(self) -> RolloutStats:
        """Counts from zero for a new plan, on the same Prometheus series (counters never go back)."""
        new = RolloutStats()
        new.prom = self.prom
        return new

    def _version(self, version: str, role: str) -> tuple[str, VersionStats]:
        key = version if version in self.versions or len(self.versions) < MAX_VERSIONS else "other"
        stats = self.versions.get(key)
        if stats is None:
            stats = self.versions[key] = VersionStats(role)
        stats.role = role  # a version's role is the one it last served in (a promoted candidate becomes stable)
        return key, stats

    def call(self, version: str, role: str, seconds: float, predictions: Sequence[Prediction] | None = None) -> None:
        """One model-server call to `version`: its answers, or None when it failed."""
        with self._lock:
            key, stats = self._version(version, role)
            stats.requests += 1
            stats.latency.append(seconds)
            if predictions is None:
                stats.errors += 1
            else:
                stats.labels.update(p.label for p in predictions)
        if self.prom:
            self.prom.requests.labels(key, role).inc()
            self.prom.latency.labels(key, role).observe(seconds)
            if predictions is None:
                self.prom.errors.labels(key, role).inc()
            else:
                for p in predictions:
                    self.prom.labels.labels(key, role, p.label).inc()

    def compare(self, stable: Sequence[Prediction], candidate: Sequence[Prediction]) -> list[int]:
        """Count the pairs; the indexes of the images whose labels differ."""
        differ = []
        with self._lock:
            for i, (s, c) in enumerate(zip(stable, candidate, strict=True)):
                dp = abs_dp(s, c)
                self.pairs += 1
                self.agreements += s.label == c.label
                self.dp.append(dp)
                self.dp_max = dp if self.dp_max is None else max(self.dp_max, dp)
                if s.label != c.label:
                    differ.append(i)
                if self.prom:
                    self.prom.pairs.inc()
                    self.prom.agreements.inc(s.label == c.label)
                    self.prom.abs_dp.observe(dp)
        return differ

    def skip(self, reason: str) -> None:
        with self._lock:
            self.skipped[reason] += 1
        if self.prom:
            self.prom.skipped.labels(reason).inc()

    def skipped_json(self) -> dict[str, int]:
        with self._lock:
            return dict(self.skipped)

    def fallback(self) -> None:
        with self._lock:
            self.fallbacks += 1

    def comparison(self) -> dict[str, Any]:
        with self._lock:
            dp = list(self.dp)
            pairs, agreements, dp_max = self.pairs, self.agreements, self.dp_max
        return {
            "pairs": pairs,
            "agreements": agreements,
            "agreement": agreements / pairs if pairs else None,
            "abs_dp": {
                "p50": percentile(dp, 0.5),
                "p90": percentile(dp, 0.9),
                "p99": percentile(dp, 0.99),
                "max": dp_max,
            },
        }

    def versions_json(self) -> dict[str, Any]:
        with self._lock:
            return {key: stats.as_json() for key, stats in self.versions.items()}


class Disagreements:
    """The newest `keep` disagreements on disk: `<stamp>.jpg` (the wire JPEG) + `<stamp>.json` (both answers).

    Called from the gateway's background task (never on a request's path); a failing disk (a
    read-only root filesystem, a full emptyDir) is logged at most once a minute, never raised.
    """

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.total = 0  # since the gateway started
        self.on_disk = 0  # kept now (after the last prune; at most `keep`)
        self.failed = 0  # writes the disk refused
        self._last_complaint = -math.inf
        self._seq = 0
        self._lock = threading.Lock()

    def write(self, jpeg: bytes, answers: dict[str, Any]) -> Path | None:
        with self._lock:
            self._seq += 1
            self.total += 1
            stamp = f"{time.time_ns():020d}-{self._seq:06d}"
        if self.keep <= 0:
            return None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            image = self.directory / f"{stamp}.jpg"
            image.write_bytes(jpeg)
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "image": image.name, **answers}
            (self.directory / f"{stamp}.json").write_text(json.dumps(record, indent=1))
            self.prune()
            return image
        except OSError as exc:
            self.failed += 1
            now = time.monotonic()
            if now - self._last_complaint >= 60:
                self._last_complaint = now
                log.warning(
                    "cannot keep disagreements in %s (%s; %d so far): set PIZZACTL_ROLLOUT_DIR to a writable directory",
                    self.directory,
                    exc,
                    self.failed,
                )
            return None

    def prune(self) -> None:
        """Delete all but the newest `keep` (names sort by time)."""
        with self._lock:
            records = sorted(self.directory.glob("*.json"))
            for old in records[: max(0, len(records) - self.keep)]:
                old.with_suffix(".jpg").unlink(missing_ok=True)
                old.unlink(missing_ok=True)
            self.on_disk = min(len(records), self.keep)
