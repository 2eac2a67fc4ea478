"""One error family for pizzactl.

Every error a user can cause carries a hint that says what to do next, an exit code and an
HTTP status. The CLI catches `PizzaError` once (see `cli.main`); anything else is a bug and
exits with `EXIT_INTERNAL`. Both servers answer the same family through
`install_error_handlers(app, body)`, each in its own JSON shape: the gateway's
`{"error": {"code", "message", "hint"}}` (`gateway_body`) and TF Serving's
`{"error": "message"}` (`tf_serving_body`), which TF Serving clients parse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module: no web framework at start-up
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse

# Exit codes, documented in README.md ("Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran but some of its work failed (e.g. one of several predictions)
EXIT_USAGE = 2  # bad flags or arguments (typer/click uses 2 as well)
EXIT_USER = 3  # something the user can fix: missing data, credentials, port in use, no model
EXIT_INTERNAL = 4  # a bug in pizzactl: please report it with --debug output
EXIT_INTERRUPTED = 130


class PizzaError(Exception):
    """Base of all errors a user may see. `hint` says what to do next."""

    exit_code = EXIT_USER
    http_status = 400
    code = "error"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    hint: str = ""

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class UsageError(PizzaError):
    """Flags or arguments that cannot work together."""

    exit_code = EXIT_USAGE
    code = "usage"


class ConfigError(PizzaError):
    """A bad value in pizzactl.toml or a PIZZACTL_* variable."""

    code = "config"


class DataError(PizzaError):
    """Dataset missing, empty or unreadable."""

    code = "data"


class CredentialsError(PizzaError):
    """Kaggle (or registry) credentials missing or refused."""

    code = "credentials"


class DownloadError(PizzaError):
    """A download (dataset, weights) failed."""

    code = "download"


class WeightsError(PizzaError):
    """Pretrained weights cannot be loaded."""

    code = "weights"


class ModelNotFoundError(PizzaError):
    """No exported model where one was expected."""

    code = "model_not_found"
    http_status = 404


class ExportError(PizzaError):
    """An export failed its own check and was not published."""

    code = "export"


class MissingDependencyError(PizzaError):
    """An optional extra (e.g. `train`) is not installed."""

    code = "missing_dependency"


class DeployError(PizzaError):
    """Deploying, or tearing down, failed in a way the user can act on."""

    code = "deploy"


class PortInUseError(DeployError):
    code = "port_in_use"


class TrainingError(PizzaError):
    """Training in a container or a Job failed; the message says why, the hint what to change."""

    code = "training"


class WaitTimeoutError(PizzaError):
    """Something awaited did not happen in time (files.wait_until: a process to stop, a pod to go)."""

    code = "timeout"


class NotDeployedError(PizzaError):
    """A command needs a deployment and there is none."""

    code = "not_deployed"


class EndpointError(PizzaError):
    """The prediction endpoint cannot be reached or answered with an error."""

    code = "endpoint"


# --- errors the servers turn into HTTP answers ---------------------------------------------


class BadInputError(PizzaError):
    """Bad input to a server: always a 4xx, never a 5xx."""

    http_status = 400
    code = "bad_request"


class InvalidJSONError(BadInputError):
    code = "invalid_json"


class InvalidBase64Error(BadInputError):
    code = "invalid_base64"


class RequestShapeError(BadInputError):
    """Well-formed JSON that does not match the schema."""

    code = "validation_error"
    http_status = 422


class RouteNotFoundError(BadInputError):
    code = "not_found"
    http_status = 404


class MethodNotAllowedError(BadInputError):
    code = "method_not_allowed"
    http_status = 405


class ServableNotFoundError(ModelNotFoundError):
    """The model server has no such model or version (yet): TF Serving's 404."""


class UnsafeURLError(BadInputError):
    code = "unsafe_url"
    http_status = 400


class FetchError(BadInputError):
    """The image URL could not be fetched (timeout, HTTP error, too many redirects)."""

    code = "fetch_failed"
    http_status = 422


class PayloadTooLargeError(BadInputError):
    code = "too_large"
    http_status = 413


class UnsupportedMediaError(BadInputError):
    code = "unsupported_media_type"
    http_status = 415


class InvalidImageError(BadInputError):
    code = "invalid_image"
    http_status = 422


class ModelUnavailableError(PizzaError):
    """The model server is down, slow or not ready: 503 with Retry-After."""

    code = "model_unavailable"
    http_status = 503
    retry_after = 1  # seconds


# --- slow and greedy clients (serving/connections.py) and API keys (serving/auth.py) ------------


class RequestTimeoutError(BadInputError):
    """The request's headers or body did not arrive in time (a slow client)."""

    code = "request_timeout"
    http_status = 408


class HeadersTooLargeError(BadInputError):
    code = "headers_too_large"
    http_status = 431


class TooManyConnectionsError(BadInputError):
    """One client address holds too many connections (429, Retry-After)."""

    code = "too_many_connections"
    http_status = 429
    retry_after = 1


class ServerBusyError(PizzaError):
    """The server holds as many connections as it may (503, Retry-After)."""

    code = "server_busy"
    http_status = 503
    retry_after = 1


class UnauthorizedError(PizzaError):
    """No API key, or not one the gateway accepts (401)."""

    code = "unauthorized"
    http_status = 401


class RateLimitedError(PizzaError):
    """An API key over its request rate (429, Retry-After)."""

    code = "rate_limited"
    http_status = 429
    retry_after = 1


class QueueFullError(ModelUnavailableError):
    """The server's bounded queue is full (serving/admission.py): refused at once, 503 with Retry-After."""

    code = "overloaded"
    reason = "queue_full"  # the label of the shed-requests metric


class ClientQueueFullError(QueueFullError):
    """The queue is full and this client holds at least its fair share of it: 429 with Retry-After."""

    code = "too_many_requests"
    http_status = 429
    reason = "client_share"


# --- one error map for both servers -------------------------------------------------------

ErrorBody = Callable[[PizzaError], dict[str, Any]]


def gateway_body(exc: PizzaError, with_status: bool = False) -> dict[str, Any]:
    """`{"error": {"code", "message", "hint"}}` (with `status` for an item of a batch answer)."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.hint:
        body["hint"] = exc.hint
    if with_status:
        body["status"] = exc.http_status
    return {"error": body}


def tf_serving_body(exc: PizzaError) -> dict[str, Any]:
    """TF Serving's REST error: `{"error": "message"}`."""
    return {"error": exc.message}


def error_response(exc: PizzaError, body: ErrorBody = gateway_body) -> JSONResponse:
    """The HTTP answer for `exc`: the status its class says (4xx or 5xx only), Retry-After on a 503."""
    from starlette.responses import JSONResponse

    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    status = exc.http_status if 400 <= exc.http_status < 600 else 400
    return JSONResponse(body(exc), status_code=status, headers=headers)


class InternalError(PizzaError):
    """A bug in a server (logged with its traceback); the client sees only this."""

    code = "internal"
    http_status = 500
    exit_code = EXIT_INTERNAL


def install_error_handlers(
    app: Starlette, body: ErrorBody = gateway_body, *, route_hint: str = "", log: logging.Logger | None = None
) -> None:
    """Answer every error on `app` as a `PizzaError` in the `body` shape.

    PizzaErrors keep their class's status; Starlette's own 404/405/413 (no route, wrong method,
    ...) and FastAPI's request validation become the matching PizzaError; anything else is a bug:
    logged, and a 500 that says so. Bad input therefore never reaches the 500 branch.
    """
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    log = log or logging.getLogger("pizzactl.server")

    async def pizza_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PizzaError)
        return error_response(exc, body)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        error: PizzaError
        if exc.status_code == 404:
            error = RouteNotFoundError(f"No route {request.method} {request.url.path}.", hint=route_hint)
        elif exc.status_code == 405:
            error = MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}.", hint=route_hint)
        else:
            error = BadInputError(exc.detail if isinstance(exc.detail, str) else str(exc.detail))
            error.http_status = exc.status_code
            error.code = {413: PayloadTooLargeError.code, 415: UnsupportedMediaError.code}.get(
                exc.status_code, "http_error"
            )
        response = error_response(error, body)
        response.headers.update(exc.headers or {})
        return response

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(InternalError("Internal error in the server; see its log."), body)

    async def client_gone(request: Request, exc: Exception) -> JSONResponse:
        """The client went away (or was cut off as too slow) mid-request: nobody to answer, no bug to log."""
        return error_response(BadInputError("The client disconnected before its request was read."), body)

    from starlette.requests import ClientDisconnect

    app.add_exception_handler(PizzaError, pizza_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, internal_error)
    try:
        from fastapi.exceptions import RequestValidationError
    except ImportError:  # pragma: no cover - fastapi is a dependency; a bare Starlette app needs none of it
        return

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(InvalidJSONError("The request body is not valid JSON."), body)
        return error_response(RequestShapeError(describe_validation(errors)), body)

    app.add_exception_handler(RequestValidationError, validation_error)


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one line a person can act on."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "The request does not match the schema."


# Top-level modules that come with an extra, not with pizzactl itself (pyproject.toml says why the
# base install holds only the CLI and predict). numpy is in serve, data and train: a base install
# meets it first in `data report`.
MODULES_OF_EXTRA = {
    "serve": ("fastapi", "starlette", "uvicorn", "aiohttp", "yarl", "multipart", "prometheus_client", "numpy"),
    "deploy": ("docker", "kubernetes"),
    "data": ("kaggle", "kagglehub", "numpy"),
    "train": ("tensorflow", "keras", "matplotlib", "tensorboard"),
}
EXTRA_OF_MODULE = {
    module: extra for extra in ("train", "serve", "deploy", "data") for module in MODULES_OF_EXTRA[extra]
}


def missing_extra(package: str, extra: str = "train") -> MissingDependencyError:
    """The error for `import tensorflow` (or similar) failing."""
    return MissingDependencyError(
        f"{package} is not installed: this command needs the pizzactl[{extra}] extra.",
        hint=f'Install it where pizzactl is installed: pip install -e ".[{extra}]" from a clone '
        f'(pipx: pipx install --force ".[{extra}]"), then run the command again.',
    )


def require_extra(extra: str) -> None:
    """Fail before any work, naming `extra`, when a module it installs cannot be found."""
    import importlib.util
    import sys

    for module in MODULES_OF_EXTRA[extra]:
        if module in sys.modules:  # imported already (None: known missing, as the import system means it)
            found = sys.modules[module] is not None
        else:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
        if not found:
            raise missing_extra(module, extra)


def as_missing_extra(exc: ImportError) -> MissingDependencyError | None:
    """The user-facing error for an ImportError of a module an extra provides, else None (a bug)."""
    root = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(root)
    return missing_extra(root, extra) if extra else None
