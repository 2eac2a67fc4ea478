"""Server-side batching, like TF Serving's `--enable_batching`, and finding the item that broke a batch.

One corrupt image fails a whole TensorFlow batch. `isolate_failures` (and its async twin for
callers on an event loop) runs the batch once and, only when it fails, each part alone, so the
error goes to the part that caused it and every other part still gets its answer. The
batcher, the gateway's `/predict/batch` and `pizzactl evaluate` all use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pizzactl.serving.admission import Throughput

T = TypeVar("T")
R = TypeVar("R")
Outcome = list[Any] | BaseException  # one part's results, or the error it raised alone


def _split(results: Sequence[R], parts: Sequence[Sequence[T]]) -> list[Outcome]:
    out: list[Outcome] = []
    offset = 0
    for part in parts:
        out.append(list(results[offset : offset + len(part)]))
        offset += len(part)
    return out


def isolate_failures(
    run: Callable[[list[T]], Sequence[R]],
    parts: Sequence[Sequence[T]],
    failure: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> list[Outcome]:
    """Run all parts as one batch; if it raises `failure`, run each part alone.

    Returns, per part, its results or the exception it raised (a lone part's error is not
    retried). Errors other than `failure` propagate: they are not the input's fault.
    """
    try:
        return _split(run([item for part in parts for item in part]), parts)
    except failure as exc:
        if len(parts) == 1:
            return [exc]
    outcomes: list[Outcome] = []
    for part in parts:
        try:
            outcomes.append(list(run(list(part))))
        except failure as exc:
            outcomes.append(exc)
    return outcomes


async def isolate_failures_async(
    run: Callable[[list[T]], Awaitable[Sequence[R]]],
    parts: Sequence[Sequence[T]],
    failure: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> list[Outcome]:
    """`isolate_failures` for an async `run`; the parts are retried concurrently."""
    try:
        return _split(await run([item for part in parts for item in part]), parts)
    except failure as exc:
        if len(parts) == 1:
            return [exc]

    async def alone(part: Sequence[T]) -> Outcome:
        try:
            return list(await run(list(part)))
        except failure as exc:
            return exc

    return list(await asyncio.gather(*(alone(part) for part in parts)))


@dataclass
class _Pending:
    items: list
    future: asyncio.Future
    enqueued: float


class Batcher:
    """Combine concurrent requests into batches.

    `run(items) -> list of per-item results` runs in a worker thread. A batch is formed when a
    worker is free, from every request waiting by then (plus those arriving within `timeout`
    seconds): an idle server answers a lone request at once, a busy one runs large batches. A
    batch never exceeds `max_batch_size` items (bigger requests are split). If a combined batch
    fails (one request's bad image), each request is rerun alone so only the culprit gets the error.
    """

    def __init__(
        self,
        run: Callable[[list], Sequence],
        max_batch_size: int = 32,
        timeout: float = 0.0,
        threads: int = 1,
        meter: Throughput | None = None,
    ):
        self.run = run
        self.meter = meter  # images per busy second, for the admission bound (serving/admission.py)
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
            # Wait for a free worker *before* forming the batch: while every worker is busy the
            # requests pile up in the queue, so the next batch takes all of them (TF Serving's
            # behaviour). An idle server runs a lone request at once, plus whatever joins within
            # `timeout` (0 by default: no waiting when nobody else is there).
            await self._slots.acquire()
            batch, held = await self._collect(first)
            task = loop.create_task(self._dispatch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self, first: _Pending) -> tuple[list[_Pending], _Pending | None]:
        """The batch that starts with `first`, and the request that did not fit (it starts the next)."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
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
                return batch, nxt
            batch.append(nxt)
            size += len(nxt.items)
        return batch, None

    async def _dispatch(self, batch: list[_Pending]) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        try:
            batch = [p for p in batch if not p.future.done()]  # client went away
            if not batch:
                return
            started = time.perf_counter()
            with self.meter.measure(sum(len(p.items) for p in batch)) if self.meter else contextlib.nullcontext():
                outcomes = await loop.run_in_executor(
                    self._executor, isolate_failures, self.run, [p.items for p in batch]
                )
            if not any(isinstance(o, BaseException) for o in outcomes):  # one batch ran (not several alone)
                size = sum(len(p.items) for p in batch)
                self.batch_sizes.append(size)
                del self.batch_sizes[:-1000]
                if self.on_batch:
                    self.on_batch(size, time.perf_counter() - started)
            for pending, outcome in zip(batch, outcomes, strict=True):
                if pending.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)
        finally:
            self._slots.release()
