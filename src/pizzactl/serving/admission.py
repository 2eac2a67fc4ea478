"""Admission: a bounded queue sized from measured throughput, so load is refused at once, not timed out.

Both servers hold one `Admission`. A request takes a place per image before any work is done
and gives them back when it is answered. The bound is what the server can serve within
`queue_seconds` at the rate it measured (`Throughput`: images per busy second, recent seconds
weighing most), never less than MIN_QUEUE (two full batches: a cold server has measured nothing
yet), or `max_queue` when that is set. A request that fits is answered however long that honest
queue is; one that does not is refused at once with Retry-After = the time to drain the queue
(`QueueFullError`, 503), or with 429 (`ClientQueueFullError`) when the client asking already holds
at least its fair share of the queue (the bound split over the clients with requests in it), so a
greedy client learns it is the one to slow down. An empty queue takes any request, so a batch
larger than the bound is still served.

This is what production servers do under overload (TF Serving's batching queue answers
UNAVAILABLE when `max_enqueued_batches` is reached; Envoy's and nginx's limits answer 503/429):
a client that waits longer than the queue would is better told so at once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator

from pizzactl.errors import ClientQueueFullError, QueueFullError

MIN_QUEUE = 64  # images: two batches of the model server's default 32
HALF_LIFE = 30.0  # seconds: how fast old measurements fade
MIN_BUSY = 0.25  # busy seconds measured before the rate is trusted


class Throughput:
    """Images per busy second: images finished over the time at least one piece of work was in progress.

    Idle time does not count, so the rate is the server's capacity when it is busy (which is when
    the bound matters), not the load it happened to get. Both sums decay with a half-life, so the
    rate follows a machine whose free CPU changes.
    """

    def __init__(self, half_life: float = HALF_LIFE, clock: Callable[[], float] = time.monotonic):
        self.half_life = half_life
        self.clock = clock
        self.images = 0.0
        self.busy = 0.0
        self.active = 0
        self._mark = clock()

    def _advance(self) -> None:
        now = self.clock()
        elapsed = max(0.0, now - self._mark)
        self._mark = now
        decay = 0.5 ** (elapsed / self.half_life)
        self.images *= decay
        self.busy = self.busy * decay + (elapsed if self.active else 0.0)

    def started(self) -> None:
        self._advance()
        self.active += 1

    def finished(self, images: int) -> None:
        self._advance()
        self.active = max(0, self.active - 1)
        self.images += images

    @contextlib.contextmanager
    def measure(self, images: int) -> Iterator[None]:
        self.started()
        done = 0
        try:
            yield
            done = images
        finally:
            self.finished(done)

    @property
    def rate(self) -> float | None:
        """Images per busy second, or None before MIN_BUSY seconds of work were seen."""
        if self.busy < MIN_BUSY or self.images <= 0:
            return None
        return self.images / self.busy


class Admission:
    """The bounded queue: `with admission.admit(n, client): ...` or a QueueFullError at once."""

    def __init__(
        self,
        queue_seconds: float,
        max_queue: int = 0,
        meter: Throughput | None = None,
        *,
        per_client: bool = True,
        min_queue: int = MIN_QUEUE,
    ):
        self.queue_seconds = max(0.0, float(queue_seconds))
        self.max_queue = max(0, int(max_queue))
        self.meter = meter or Throughput()
        self.per_client = per_client
        self.min_queue = max(1, int(min_queue))
        self.held = 0
        self.clients: Counter[str] = Counter()
        self.on_shed: Callable[[str], None] | None = None

    def bound(self) -> int:
        """Images that may be queued (waiting or running): max_queue, else rate x queue_seconds."""
        if self.max_queue:
            return self.max_queue
        rate = self.meter.rate
        return max(self.min_queue, math.floor(rate * self.queue_seconds)) if rate else self.min_queue

    def expected_wait(self, ahead: int | None = None) -> float:
        """Seconds to serve `ahead` queued images (default: all held) at the measured rate (0 unknown)."""
        rate = self.meter.rate
        ahead = self.held if ahead is None else ahead
        return ahead / rate if rate else 0.0

    def retry_after(self) -> int:
        """Whole seconds until the queue has drained (at least 1)."""
        return max(1, math.ceil(self.expected_wait()))

    def refuse(self, images: int, client: str | None) -> QueueFullError | None:
        """The error for a request of `images` that does not fit now, or None if it fits."""
        bound = self.bound()
        if self.held == 0 or self.held + images <= bound:
            return None
        mine = self.clients.get(client, 0) if client is not None else 0
        share = bound / max(1, len(self.clients))
        error: QueueFullError
        if self.per_client and client is not None and mine and mine >= share:
            error = ClientQueueFullError(
                f"Too many requests from {client} in the queue ({mine} images of {bound}).",
                hint="Send fewer requests at a time, or retry after Retry-After seconds.",
            )
        else:
            error = QueueFullError(
                f"Queue full: {self.held} images are queued, at most {bound} "
                f"(about {self.queue_seconds:g}s of work at the measured rate).",
                hint="The server is at capacity; retry after Retry-After seconds "
                "(PIZZACTL_QUEUE_SECONDS / PIZZACTL_MAX_QUEUE size the queue).",
            )
        error.retry_after = self.retry_after()
        return error

    @contextlib.contextmanager
    def admit(self, images: int, client: str | None = None) -> Iterator[None]:
        error = self.refuse(images, client)
        if error is not None:
            if self.on_shed:
                self.on_shed(error.reason)
            raise error
        self.held += images
        if client is not None:
            self.clients[client] += images
        try:
            yield
        finally:
            self.held -= images
            if client is not None:
                self.clients[client] -= images
                if self.clients[client] <= 0:
                    del self.clients[client]
