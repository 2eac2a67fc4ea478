"""Optional API keys at the gateway's door, and a request rate per key.

Off unless keys are configured. The gateway keeps only SHA-256 digests of the keys
(`api_key_hashes`, comma-separated hex; `api_key` is hashed at start and not kept), so what a
deploy writes (a Kubernetes Secret, a container's environment, the local processes' environment)
never holds a key itself. A request presents its key as `Authorization: Bearer KEY` or
`X-API-Key: KEY`; without a valid one it gets 401 JSON before anything reads its body, calls the
model server or fetches a URL. `/healthz`, `/readyz` (probes), the web page with its static
files and the API docs stay open; `/metrics` and `/rollout` too when `metrics_require_key` is off. Keys in the
query string are not accepted (they would end in access logs), and no key is ever logged.

A key over its rate (`api_key_rate` requests/s, bursts of `api_key_burst`; a token bucket per
key) gets 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Iterable

from pizzactl.errors import ConfigError, RateLimitedError, UnauthorizedError, error_response, gateway_body

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PREFIXES = ("/static/",)
_HEX = re.compile(r"[0-9a-f]{64}")


def key_hash(key: str) -> str:
    """The SHA-256 hex digest pizzactl stores in place of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def accepted_hashes(api_key: str | None, api_key_hashes: str | None) -> frozenset[str]:
    """The digests a gateway accepts: `api_key_hashes` (comma- or space-separated) and `api_key`'s."""
    digests = set()
    for item in re.split(r"[,\s]+", (api_key_hashes or "").strip().lower()):
        item = item.removeprefix("sha256:")
        if not item:
            continue
        if not _HEX.fullmatch(item):
            raise ConfigError(
                "api_key_hashes must be SHA-256 hex digests (64 hex characters), comma-separated.",
                hint="Set the key itself with PIZZACTL_API_KEY (it is hashed), or its digest: "
                "printf %s KEY | sha256sum.",
            )
        digests.add(item)
    if api_key:
        digests.add(key_hash(api_key))
    return frozenset(digests)


def hashes_setting(digests: Iterable[str]) -> str:
    """The digests as the `api_key_hashes` setting (sorted, so a redeploy renders the same text)."""
    return ",".join(sorted(digests))


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of `Authorization: Bearer KEY` or `X-API-Key: KEY`, if any."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class RateLimiter:
    """A token bucket per key digest: `rate` requests/s, up to `burst` at once (0 rate: no limit)."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # digest -> (tokens, when)

    def take(self, digest: str) -> float:
        """0 if the request may go, else the seconds until it could."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, then = self.buckets.get(digest, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self.buckets[digest] = (tokens - 1.0, now)
            return 0.0
        self.buckets[digest] = (tokens, now)
        return (1.0 - tokens) / self.rate


UNAUTHORIZED_HINT = (
    "Send the key as `Authorization: Bearer KEY` or `X-API-Key: KEY` "
    "(pizzactl predict: --api-key or PIZZACTL_API_KEY; the web page asks for it)."
)


class RequireKey:
    """ASGI middleware: 401 without a valid key, 429 over the key's rate, else the app."""

    def __init__(self, app, digests: frozenset[str], *, metrics_open: bool = False, rate: float = 0, burst: int = 20):
        self.app = app
        self.digests = tuple(digests)
        self.open = OPEN_PATHS | ({"/metrics", "/rollout"} if metrics_open else set())
        self.limiter = RateLimiter(rate, burst)

    def is_open(self, path: str) -> bool:
        return path in self.open or path.startswith(OPEN_PREFIXES)

    def valid(self, key: str | None) -> str | None:
        """The key's digest if it is one of ours (compared in constant time), else None."""
        if key is None:
            return None
        digest = key_hash(key)
        found = None
        for known in self.digests:
            if hmac.compare_digest(digest, known):
                found = known
        return found

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.digests or self.is_open(scope.get("path", "")):
            return await self.app(scope, receive, send)
        key = presented_key(scope.get("headers", []))
        digest = self.valid(key)
        if digest is None:
            message = "This gateway needs an API key." if key is None else "The API key is not valid."
            response = error_response(UnauthorizedError(message, hint=UNAUTHORIZED_HINT), gateway_body)
            response.headers["WWW-Authenticate"] = 'Bearer realm="pizzactl"'
            return await response(scope, receive, send)
        wait = self.limiter.take(digest)
        if wait > 0:
            error = RateLimitedError(
                f"Too many requests for this API key (at most {self.limiter.rate:g}/s).",
                hint="Slow down; retry after the Retry-After seconds (PIZZACTL_API_KEY_RATE sets the rate).",
            )
            error.retry_after = max(1, math.ceil(wait))
            return await error_response(error, gateway_body)(scope, receive, send)
        return await self.app(scope, receive, send)


def key_env(settings) -> dict[str, str]:
    """The environment `serve` and `deploy --target local` give their servers: the accepted digests
    and never the key itself (an inherited PIZZACTL_API_KEY is blanked, which unsets it)."""
    digests = accepted_hashes(settings.api_key, settings.api_key_hashes)
    return {"PIZZACTL_API_KEY": "", "PIZZACTL_API_KEY_HASHES": hashes_setting(digests)}
