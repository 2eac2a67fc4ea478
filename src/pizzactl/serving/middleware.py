"""ASGI middleware both servers use: request metrics and a streaming request-size limit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pizzactl.errors import ErrorBody, PayloadTooLargeError, error_response, gateway_body

Scope = dict[str, Any]


class ObserveRequests:
    """After every HTTP request, `observe(scope, status, seconds)` (the scope then names the route).

    `in_flight` (a Prometheus Gauge, or None) counts the requests being handled.
    """

    def __init__(self, app, observe: Callable[[Scope, int, float], None], in_flight: Any = None):
        self.app = app
        self.observe = observe
        self.in_flight = in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        if self.in_flight is not None:
            self.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if self.in_flight is not None:
                self.in_flight.dec()
            self.observe(scope, status, time.perf_counter() - started)


class BodyLimit:
    """413 for request bodies over `max_bytes`: by Content-Length up front, else while the body streams in."""

    def __init__(self, app, max_bytes: int, hint: str = "", body: ErrorBody = gateway_body):
        self.app = app
        self.max_bytes = max_bytes
        self.hint = hint
        self.body = body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = error_response(self.error(), self.body)
                return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self.error()
            return message

        await self.app(scope, limited, send)

    def error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"The request body is larger than {self.max_bytes:,} bytes.", hint=self.hint)
