"""One error family for pizzactl.

Every error a user can cause carries a hint that says what to do next and an exit code.
The CLI catches `PizzaError` once (see `cli.main`); anything else is a bug and exits
with `EXIT_INTERNAL`. Servers map the same family to HTTP statuses (`http_status`).
"""

from __future__ import annotations

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


class NotDeployedError(PizzaError):
    """A command needs a deployment and there is none."""

    code = "not_deployed"


class EndpointError(PizzaError):
    """The prediction endpoint cannot be reached or answered with an error."""

    code = "endpoint"


# --- errors the gateway turns into HTTP answers -------------------------------------------


class BadInputError(PizzaError):
    """Bad input to a server: always a 4xx, never a 5xx."""

    http_status = 400
    code = "bad_request"


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


# Top-level modules that come with an extra, not with pizzactl itself.
EXTRA_OF_MODULE = {"tensorflow": "train", "keras": "train", "matplotlib": "train"}


def missing_extra(package: str, extra: str = "train") -> MissingDependencyError:
    """The error for `import tensorflow` (or similar) failing."""
    return MissingDependencyError(
        f"{package} is not installed: this command needs the pizzactl[{extra}] extra.",
        hint=f'Install it where pizzactl is installed: pip install -e ".[{extra}]" from a clone '
        f'(pipx: pipx install --force ".[{extra}]"), then run the command again.',
    )


def as_missing_extra(exc: ImportError) -> MissingDependencyError | None:
    """The user-facing error for an ImportError of a module an extra provides, else None (a bug)."""
    root = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(root)
    return missing_extra(root, extra) if extra else None
