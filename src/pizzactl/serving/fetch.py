"""Fetch an image URL without becoming an SSRF proxy.

Only http and https. The host is resolved once, every address it resolves to must be public
(not loopback, private, link-local, multicast, reserved, unspecified, shared or a cloud
metadata address), and the connection goes to the very address that was checked, so a DNS
answer that changes between check and connect (DNS rebinding) does not matter. That happens in
aiohttp's resolver hook (`PinnedResolver`, an `aiohttp.abc.AbstractResolver`): the session's
connector asks it for the addresses of each connection's host and gets back only the checked
one, while the URL keeps the name, so the Host header and TLS SNI/certificate check use it.
aiohttp does not ask a resolver about an IP literal, so a literal host is checked before the
request. The connector caches no DNS answer and keeps no connection alive: every hop resolves
and is checked afresh.
Redirects are followed by hand (at most 3), each hop checked again. The body is streamed and
cut off at `max_bytes` (413); the content type must be image/* or application/octet-stream
(415). `allow_private=True` (PIZZACTL_ALLOW_PRIVATE_URLS=1) lets loopback and private
addresses through for local testing; link-local and metadata addresses stay blocked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from pizzactl import __version__
from pizzactl.config import MAX_IMAGE_BYTES
from pizzactl.errors import BadInputError, FetchError, PayloadTooLargeError, UnsafeURLError, UnsupportedMediaError

REDIRECTS = {301, 302, 303, 307, 308}

# Cloud metadata services (AWS, GCP, Azure, ECS, Alibaba, Oracle ...), blocked even with allow_private.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "169.254.169.253", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False
    max_bytes: int = MAX_IMAGE_BYTES
    max_redirects: int = 3
    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    total_timeout: float = 10.0


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool = False) -> str | None:
    """Why `ip` must not be fetched from, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return address_problem(ip.ipv4_mapped, allow_private)
        if ip.sixtofour is not None:
            return address_problem(ip.sixtofour, allow_private)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_loopback:
        return None if allow_private else "a loopback address"
    if ip.is_private:
        return None if allow_private else "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved or non-public address"
    return None


def check_url(url: str) -> URL:
    """Parse and check the scheme and host of a URL (no network)."""
    if not isinstance(url, str) or not url.strip():
        raise BadInputError("The URL is empty.", hint="Send an http(s) URL of an image.")
    try:
        parsed = URL(url.strip())
        host = parsed.host
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"The URL is malformed: {exc}", hint="Send an http(s) URL of an image.") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURLError(
            f"Only http and https URLs can be fetched, not {parsed.scheme or 'a relative URL'!r}.",
            hint="Send an http(s) URL, or upload the file instead.",
        )
    if not host:
        raise BadInputError("The URL has no host.", hint="Send an absolute http(s) URL.")
    return parsed


async def resolve_checked(host: str, port: int, allow_private: bool = False) -> str:
    """Resolve `host` and return an address to connect to; every address must pass the check."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise FetchError(f"Cannot resolve {host!r}: {exc}", hint="Check the URL's host name.") from None
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise FetchError(f"Cannot resolve {host!r}.", hint="Check the URL's host name.")
    for ip in addresses:
        problem = address_problem(ip, allow_private)
        if problem:
            hint = "Use a public URL, or upload the file instead."
            if problem in ("a loopback address", "a private address"):
                hint += " To fetch from your own network, start the gateway with --allow-private-urls (PIZZACTL_ALLOW_PRIVATE_URLS=1)."
            raise UnsafeURLError(f"Refusing to fetch {host!r}: it resolves to {ip}, {problem}.", hint=hint)
    return str(addresses[0])


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver hook: one lookup per connection, every address checked, and only the
    checked address handed back to connect to (see the module docstring).

    The contract (aiohttp/abc.py, aiohttp/connector.py `_resolve_host`): `resolve` returns
    `ResolveResult`s whose `host` is the address to connect to and `hostname` the name (used for
    TLS); IP literals never reach a resolver. An exception that is not an OSError (our 4xx
    PizzaErrors) propagates out of the request unchanged.
    """

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ip = await resolve_checked(host, port, self.allow_private)
        return [
            ResolveResult(
                hostname=host,
                host=ip,
                port=port,
                family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
        ]

    async def close(self) -> None:
        pass


def new_session(
    policy: FetchPolicy = FetchPolicy(), ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """A session for image URLs: the checking resolver, no DNS cache, no kept-alive connections
    (each hop resolves afresh), no proxies from the environment. Call from a running event loop."""
    connector = aiohttp.TCPConnector(
        resolver=PinnedResolver(policy.allow_private),
        use_dns_cache=False,
        force_close=True,
        limit=64,
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout, sock_read=policy.read_timeout),
        trust_env=False,
        headers={"User-Agent": f"pizzactl-gateway/{__version__}", "Accept": "image/*"},
    )


def fetch_image_blocking(url: str, policy: FetchPolicy = FetchPolicy()) -> bytes:
    """`fetch_image` for synchronous callers (the CLI, a notebook whose event loop is running).

    The fetch runs on its own event loop in a worker thread, so it works whether or not the
    calling thread already runs one.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="pizzactl-fetch") as pool:
        return pool.submit(asyncio.run, fetch_image(url, policy)).result()


async def fetch_image(
    url: str, policy: FetchPolicy = FetchPolicy(), session: aiohttp.ClientSession | None = None
) -> bytes:
    """The bytes of the image at `url`, or a 4xx PizzaError. Never follows a URL to an unsafe address.

    `session` (from `new_session`, whose resolver holds the private-address rule) is reused across
    calls; without one a session is opened and closed for this fetch."""
    own = session is None
    session = session or new_session(policy)
    try:
        async with asyncio.timeout(policy.total_timeout):
            return await _fetch(url, policy, session)
    except TimeoutError:
        raise FetchError(
            f"Fetching {url} took longer than {policy.total_timeout:g}s.", hint="Try another URL, or upload the file."
        ) from None
    finally:
        if own:
            await session.close()


async def _fetch(url: str, policy: FetchPolicy, session: aiohttp.ClientSession) -> bytes:
    current = check_url(url)
    for hop in range(policy.max_redirects + 1):
        host = current.host or ""
        if _literal(host):  # aiohttp connects to a literal without asking the resolver
            await resolve_checked(host, current.port or 0, policy.allow_private)
        try:
            async with session.get(current, allow_redirects=False) as response:
                if response.status in REDIRECTS and "location" in response.headers:
                    if hop == policy.max_redirects:
                        raise FetchError(
                            f"{url} redirects more than {policy.max_redirects} times.",
                            hint="Send the final URL of the image.",
                        )
                    current = check_url(urljoin(str(current), response.headers["location"]))
                    continue
                if response.status >= 400 or response.status < 200 or response.status in REDIRECTS:
                    raise FetchError(
                        f"{current} answered HTTP {response.status}.",
                        hint="Check the URL opens in a browser, or upload the file instead.",
                    )
                _check_content_type(response, current)
                return await _read_capped(response, policy.max_bytes, current)
        except TimeoutError:  # aiohttp's connect and read timeouts (ServerTimeoutError is one)
            raise FetchError(
                f"Fetching {current} timed out.", hint="Try again later, or upload the file instead."
            ) from None
        except aiohttp.ClientError as exc:
            raise FetchError(
                f"Fetching {current} failed: {exc or type(exc).__name__}",
                hint="Check the URL, or upload the file instead.",
            ) from None
    raise FetchError(f"{url} redirects too often.")  # pragma: no cover - loop always returns or raises


def _check_content_type(response: aiohttp.ClientResponse, url: URL) -> None:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and not (media.startswith("image/") or media in ("application/octet-stream", "binary/octet-stream")):
        raise UnsupportedMediaError(
            f"{url} is {media}, not an image.",
            hint="Send the URL of the image itself (right-click the image, copy image address).",
        )


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int, url: URL) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(
            f"{url} is {int(declared):,} bytes; the limit is {max_bytes:,}.", hint="Use a smaller image."
        )
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(
                f"{url} is larger than the limit of {max_bytes:,} bytes.", hint="Use a smaller image."
            )
        chunks.append(chunk)
    return b"".join(chunks)
