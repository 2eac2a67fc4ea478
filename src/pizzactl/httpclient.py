"""The CLI side's HTTP client: `requests` (predict, the deploy targets' probes, status, bench).

The gateway speaks aiohttp (serving/client.py to the model server, serving/fetch.py for image
URLs); everything synchronous on the user's side goes through here. Sessions ignore proxy and
netrc settings from the environment (`trust_env = False`): pizzactl talks to servers it started
or was pointed at, and a corporate HTTP_PROXY must not swallow a request to 127.0.0.1.
`requests` is imported when a request is made, not at `pizzactl --help`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests


def session(headers: dict[str, str] | None = None, pool: int = 10) -> requests.Session:
    """A session without the environment's proxies, keeping up to `pool` connections per host."""
    import requests
    from requests.adapters import HTTPAdapter

    s = requests.Session()
    s.trust_env = False
    s.headers.update(headers or {})
    adapter = HTTPAdapter(pool_connections=pool, pool_maxsize=pool)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def get(url: str, timeout: float) -> requests.Response | None:
    """GET `url` (proxies from the environment ignored); None when no answer came (any
    connection error or timeout). For probes: is it up, which version does it serve."""
    import requests

    with session() as s:
        try:
            return s.get(url, timeout=timeout)
        except requests.RequestException:
            return None


def json_or_none(url: str, timeout: float) -> Any:
    """The JSON body of a GET, or None when there was no answer or it was not JSON."""
    response = get(url, timeout)
    if response is None:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def connect_failed(exc: BaseException) -> bool:
    """True when the connection itself could not be made (refused, no route, unknown host,
    connect timeout), False for an error on a connection that was made (reset mid-request, read
    timeout): a gateway that cannot be reached at all is one error, not one per image."""
    import requests
    from urllib3.exceptions import NewConnectionError

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # requests wraps urllib3's MaxRetryError around the cause
    return isinstance(reason, NewConnectionError)  # NameResolutionError is one
