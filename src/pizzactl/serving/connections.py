"""Slow and greedy clients, cut off where they can be seen: in uvicorn's HTTP protocol.

uvicorn has a keep-alive timeout and nothing else: a client that trickles its headers or its
body one byte at a time holds a connection (and a file descriptor) for as long as it likes,
and nothing caps the connections one address may open (slowloris). An ASGI middleware cannot
help: the app is called only once the headers are complete. So both servers run uvicorn with
`GuardedProtocol`, a subclass of uvicorn's httptools protocol that adds, per connection:

* a header timeout (nginx `client_header_timeout`, Envoy `request_headers_timeout`): the
  request line and headers must be complete within `header_timeout` seconds of the connection
  (or of the first byte of the next request on a kept-alive connection), and no larger than
  `max_header_bytes`;
* a body timeout with a minimum rate (Apache mod_reqtimeout `body=20,MinRate=500`): the body
  must arrive within `body_timeout` seconds, extended by one second for every `min_body_rate`
  bytes received, so a large upload on a slow link passes and a trickle does not. Time during
  which the server itself holds the body back (uvicorn's flow control, `Expect: 100-continue`)
  does not count;
* the idle keep-alive timeout (`keepalive_timeout`, nginx `keepalive_timeout`);
* connection limits (nginx `limit_conn`): at most `max_connections` in total (503) and
  `max_connections_per_client` per client address (429), both answered with Retry-After.

A request cut off gets 408 (or 431) in the server's own error shape, `Connection: close`; a
connection that will not take its answer is aborted `LINGER` seconds later. While the app
works on a request no timer runs: the app's own timeouts cover that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pizzactl.config import Settings, view
from pizzactl.errors import (
    ErrorBody,
    HeadersTooLargeError,
    PizzaError,
    RequestTimeoutError,
    ServerBusyError,
    TooManyConnectionsError,
    gateway_body,
)

log = logging.getLogger("pizzactl.connections")

LINGER = 2.0  # seconds a refused or cut-off client has to read its answer before the socket is aborted
MAX_CONNECTIONS_CAP = 4096
REPORT_EVERY = 10.0  # seconds between log lines about refused and cut-off clients (not one per client)


def default_max_connections() -> int:
    """Half the open-file limit (the rest is for the server's own sockets and files), at most 4096."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - Windows
        return 512
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return MAX_CONNECTIONS_CAP
    return max(16, min(MAX_CONNECTIONS_CAP, soft // 2))


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits one server applies to its clients: a view of `Settings` (see docs/serve.md)."""

    header_timeout: float = 20.0
    body_timeout: float = 20.0
    min_body_rate: int = 500
    keepalive_timeout: float = 75.0
    max_connections: int = 0  # 0: default_max_connections()
    max_connections_per_client: int = 128
    max_header_bytes: int = 32 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return view(cls, settings)

    @property
    def total(self) -> int:
        return self.max_connections if self.max_connections > 0 else default_max_connections()


def raw_response(exc: PizzaError, body: ErrorBody, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 answer with `Connection: close`, written straight to the socket."""
    payload = json.dumps(body(exc)).encode()
    status = exc.http_status
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class Guard:
    """The connection counts of one server, shared by its connections (one event loop, no locks)."""

    def __init__(self, limits: ConnectionLimits, body: ErrorBody = gateway_body):
        self.limits = limits
        self.body = body
        self.max_total = limits.total
        self.total = 0
        self.per_client: Counter[str] = Counter()
        self.events: Counter[str] = Counter()  # refused / cut off since the last report
        self._reported = time.monotonic()

    def admit(self, address: str) -> PizzaError | None:
        """Count the connection in, or say why it is refused."""
        if self.total >= self.max_total:
            return ServerBusyError(
                f"The server has {self.total} connections open, its limit.",
                hint="Retry in a moment (PIZZACTL_MAX_CONNECTIONS raises the limit).",
            )
        per_client = self.limits.max_connections_per_client
        if per_client > 0 and self.per_client[address] >= per_client:
            return TooManyConnectionsError(
                f"Too many connections from your address (at most {per_client}).",
                hint="Reuse connections or close idle ones (PIZZACTL_MAX_CONNECTIONS_PER_CLIENT raises the limit).",
            )
        self.total += 1
        self.per_client[address] += 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        self.per_client[address] -= 1
        if self.per_client[address] <= 0:
            del self.per_client[address]

    def note(self, event: str) -> None:
        """Count a refusal or a cut-off; one log line every REPORT_EVERY seconds, not one per client."""
        self.events[event] += 1
        now = time.monotonic()
        if now - self._reported >= REPORT_EVERY:
            summary = ", ".join(f"{n} {what}" for what, n in sorted(self.events.items()))
            log.warning("slow or greedy clients in the last %.0fs: %s", now - self._reported, summary)
            self.events.clear()
            self._reported = now


def protocol_class(limits: ConnectionLimits, body: ErrorBody = gateway_body) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with `limits` (one `Guard` per class: make one class per server);
    its own answers (408, 429, 431, 503) are JSON in the `body` shape."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    guard = Guard(limits, body)
    error_body = body

    class GuardedProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.guard = guard
            self.phase = "headers"  # headers -> body -> idle (the app's turn, or keep-alive) -> headers ...
            self.timer: asyncio.TimerHandle | None = None
            self.address: str | None = None  # set once counted in
            self.header_bytes = 0
            self.body_bytes = 0
            self.body_started = 0.0
            self.lost = False

        # --- connections

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else ""
            refusal = guard.admit(address)
            if refusal is not None:
                self.refuse(refusal)
                return
            self.address = address
            self.arm(limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost = True
            self.cancel()
            if self.address is not None:
                guard.release(self.address)
                self.address = None
            super().connection_lost(exc)

        def refuse(self, error: PizzaError) -> None:
            """Answer at once and read (discard) what the client sends until it closes, at most LINGER s."""
            guard.note("connections refused")
            self.phase = "refused"
            self.transport.write(raw_response(error, error_body, retry_after=1))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.timer = self.loop.call_later(LINGER, self.abort)

        # --- timers

        def arm(self, delay: float) -> None:
            """Run `expired` in `delay` seconds (a limit set to 0 or less: no timer)."""
            self.cancel()
            if delay > 0:
                self.timer = self.loop.call_later(delay, self.expired)

        def cancel(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

        def expired(self) -> None:
            self.timer = None
            if self.phase == "headers":
                self.cut_off("header timeouts", RequestTimeoutError("The request headers did not arrive in time."))
            elif self.phase == "body":
                now = self.loop.time()
                held_back = self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)
                if held_back:  # the server is not reading: the client's clock starts again when it does
                    self.body_started, self.body_bytes = now, 0
                    self.arm(limits.body_timeout)
                    return
                deadline = self.body_started + limits.body_timeout
                if limits.min_body_rate > 0:
                    deadline += self.body_bytes / limits.min_body_rate
                if now < deadline:
                    self.arm(max(deadline - now, 0.001))
                    return
                self.cut_off("body timeouts", RequestTimeoutError("The request body did not arrive in time."))

        def cut_off(self, event: str, error: PizzaError) -> None:
            """408/431 (unless an answer has started), then close; abort if the client will not read."""
            guard.note(event)
            self.phase = "closed"
            cycle = self.cycle
            answered = cycle is not None and cycle.response_started and not cycle.response_complete
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app's receive() now says http.disconnect
                cycle.message_event.set()
            if not answered and not self.transport.is_closing():
                self.transport.write(raw_response(error, error_body))
            self.close_soon()

        def close_soon(self) -> None:
            self.cancel()
            if not self.transport.is_closing():
                self.transport.close()
            self.timer = self.loop.call_later(LINGER, self.abort)

        def abort(self) -> None:
            self.timer = None
            if not self.lost:
                self.transport.abort()

        def timeout_keep_alive_handler(self) -> None:
            self.close_soon()  # uvicorn's close() alone waits forever on a client that does not read

        def shutdown(self) -> None:
            super().shutdown()  # the server stops: idle connections close, a running request finishes
            if self.transport.is_closing() and not self.lost:
                self.cancel()
                self.timer = self.loop.call_later(LINGER, self.abort)

        # --- bytes in

        def data_received(self, data: bytes) -> None:
            if self.phase in ("refused", "closed"):
                return
            if self.phase == "idle":
                self.phase = "headers"
                self.arm(limits.header_timeout)
            super().data_received(data)
            if self.phase == "headers" and self.header_bytes > limits.max_header_bytes:  # still coming
                self.cut_off(
                    "headers too large",
                    HeadersTooLargeError(f"The request headers are larger than {limits.max_header_bytes:,} bytes."),
                )

        def on_url(self, url: bytes) -> None:
            self.header_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self.header_bytes += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self.phase == "closed":
                return
            if self.header_bytes > limits.max_header_bytes:  # arrived at once, too large all the same
                self.cut_off(
                    "headers too large",
                    HeadersTooLargeError(f"The request headers are larger than {limits.max_header_bytes:,} bytes."),
                )
                return
            self.phase = "body"
            self.header_bytes = 0  # the next request's count starts at its own request line
            self.body_started = self.loop.time()
            self.body_bytes = 0
            self.arm(limits.body_timeout)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self.phase == "closed":
                return
            self.body_bytes += len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            if self.phase == "closed":
                return
            if self.phase == "body":
                self.phase = "idle"
                self.cancel()
            super().on_message_complete()

    return GuardedProtocol


def uvicorn_config(
    app: Any, host: str, port: int, level: str, *, access_log: bool, limits: ConnectionLimits, body: ErrorBody
):
    """uvicorn's Config for one of our servers: uvloop, the guarded httptools protocol, no websockets."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=level.lower(),
        access_log=access_log,
        loop="auto",
        http=protocol_class(limits, body),
        ws="none",
        timeout_keep_alive=limits.keepalive_timeout,  # type: ignore[arg-type]
    )
