"""Settings: built-in defaults -> ./pizzactl.toml -> PIZZACTL_* environment -> flags.

`load_settings()` resolves every value once and remembers where it came from, so
`pizzactl config show` can explain it. Every path pizzactl writes to (models, runs, cache,
deploy state) is a setting, which is how tests point them at `tmp_path`. The servers read
the same settings: the gateway's and the model server's configurations are views of
`Settings` (`view()`), so a PIZZACTL_* variable means the same thing to every process.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from pizzactl.errors import EXIT_USER, ConfigError

CONFIG_FILE = "pizzactl.toml"
ENV_PREFIX = "PIZZACTL_"

# The model contract's names and the servers' ports, in one place.
MODEL_NAME = "pizza"  # MODELS/<MODEL_NAME>/<version>/ and /v1/models/<MODEL_NAME>
GATEWAY_PORT = 9696
MODEL_PORT = 8501  # TF Serving's REST port
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # well below Pillow's bomb limit (~89 Mpx), above any phone photo
# What can run a model in the builtin model server (serving.modelserver.runtimes), fastest first;
# auto: the fastest one `pizzactl export` converted and checked.
ModelRuntime = Literal["auto", "litert-int8", "litert", "tensorflow"]
CHOICES = {"model_runtime": get_args(ModelRuntime)}
SECRET_SETTINGS = frozenset({"api_key"})  # shown as "(set)", never as their value


def _home(*parts: str, env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    return Path(base).expanduser() / "pizzactl" if base else Path(fallback).expanduser()


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one pizzactl invocation."""

    # data
    data_dir: Path | None = None  # None: download `dataset` from Kaggle into cache_dir
    dataset: str = "carlosrunner/pizza-not-pizza"
    # training
    backbone: str = "efficientnet_lite2"
    weights: str = "imagenet"
    epochs: int = 30
    fine_tune_epochs: int | None = None  # None: the backbone recipe's (6 for efficientnet_lite0/1, else 0)
    augmented_views: int | None = None  # cached per photo; None: the recipe's (8 for efficientnet_lite0/1, else 4)
    image_size: int | None = None  # the exported model's input size; None: the backbone recipe's
    batch_size: int = 32
    augment: bool = True
    seed: int = 42
    val_split: float = 0.2
    # where things live
    models_dir: Path = Path("models")
    runs_dir: Path = Path("runs")
    cache_dir: Path = field(default_factory=lambda: _home(env="XDG_CACHE_HOME", fallback="~/.cache/pizzactl"))
    state_dir: Path = field(default_factory=lambda: _home(env="XDG_STATE_HOME", fallback="~/.local/state/pizzactl"))
    # serving and deploying
    host: str = "127.0.0.1"
    port: int = GATEWAY_PORT
    model_port: int = MODEL_PORT
    allow_private_urls: bool = False
    target: str = "kind"
    model_server: str = "tfserving"
    base_image: str = "python:3.11-slim"
    cluster: str = "pizzactl"
    namespace: str = "pizzactl"
    context: str | None = None
    registry: str | None = None
    pull_secret: str | None = None  # imagePullSecrets for --registry images (a secret in the namespace)
    platform: str | None = None  # build for this platform (linux/amd64, linux/arm64); None: the target's
    endpoint: str | None = None
    log_level: str = "info"  # the servers' log level
    # the gateway (python -m pizzactl.serving.gateway)
    model_url: str | None = None  # None: http://127.0.0.1:<model_port>
    model_name: str = MODEL_NAME
    model_timeout: float = 2.0  # seconds until a model-server call becomes a 503
    max_concurrency: int = 64  # model-server requests in flight
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_request_bytes: int = 32 * 1024 * 1024
    max_batch_items: int = 32
    fetch_timeout: float = 10.0
    # the model's class names, for a model server that does not tell them (TF Serving): comma-separated
    classes: str | None = None
    access_log: bool = False  # a log line per request (/metrics counts them anyway)
    # both servers: slow and greedy clients (serving/connections.py, docs/serve.md#slow-and-greedy-clients)
    header_timeout: float = 20.0  # seconds for the request line and headers (nginx client_header_timeout)
    body_timeout: float = 20.0  # seconds for the body, plus 1 s per min_body_rate bytes received
    min_body_rate: int = 500  # bytes/s a body must keep up (Apache mod_reqtimeout MinRate); 0: no extension
    keepalive_timeout: float = 75.0  # seconds an idle kept-alive connection stays open (nginx keepalive_timeout)
    max_connections: int = 0  # open connections in total (503 past it); 0: half the open-file limit, <= 4096
    max_connections_per_client: int = 128  # per client address (429 past it); 0: no limit
    max_header_bytes: int = 32 * 1024  # request line + headers (431 past it)
    # API keys (serving/auth.py, docs/serve.md#api-keys): off unless a key or a digest is set
    api_key: str | None = field(default=None, repr=False)  # a key: serve/deploy require it, predict sends it
    api_key_hashes: str | None = None  # more accepted keys, as SHA-256 hex digests, comma-separated
    metrics_require_key: bool = True  # with keys on, /metrics needs one too
    api_key_rate: float = 0.0  # requests/s per key (429 past it); 0: no limit
    api_key_burst: int = 20  # requests a key may send at once within its rate
    # the model server (python -m pizzactl.serving.modelserver)
    max_batch_size: int = 32
    batch_timeout_ms: float = 0.0  # how long a free worker waits for company; a busy one batches anyway
    batch_threads: int = 1  # batches run at the same time
    poll_seconds: float = 2.0  # how often to look for new versions
    tf_intra_op_threads: int = -1  # -1: chosen for the machine, 0: TensorFlow's default
    tf_inter_op_threads: int = -1
    model_runtime: str = "auto"  # tensorflow | litert | litert-int8 | auto: the fastest one export checked
    # admission, in both servers (serving/admission.py): a bounded queue instead of timeouts
    queue_seconds: float = 5.0  # the queue holds what the measured throughput serves in this time
    max_queue: int = 0  # images queued at most; 0: sized from the measured throughput (queue_seconds)
    # training on Docker or a cluster (`train --on`, docs/train.md)
    gpus: int = 0  # nvidia.com/gpu per training pod (docker: --gpus N); >0 builds the CUDA trainer image
    train_cpu: str = "2"  # the training pod's CPU request
    train_memory: str = "4Gi"  # its memory request and limit (past it the kernel OOM-kills the trainer)
    node_selector: str | None = None  # "key=value,key2=value2": nodes the training pod may run on
    tolerations: str | None = None  # "key[=value]:Effect,...": taints it tolerates (GPUs add nvidia.com/gpu)
    backoff_limit: int = 2  # failed training pods retried before the Job fails
    train_deadline: int = 21600  # seconds before the Job is stopped (activeDeadlineSeconds)
    train_volume_size: str = "10Gi"  # the PersistentVolumeClaim for data, feature cache and outputs

    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def model_server_url(self) -> str:
        """Where the gateway finds the model server."""
        return self.model_url or f"http://127.0.0.1:{self.model_port}"

    def as_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            if f.name in SECRET_SETTINGS and value is not None:
                value = "(set)"  # never printed, logged or written (config show, run records)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings) if f.name != "sources"]


def _target_type(name: str) -> str:
    ann = {f.name: f.type for f in fields(Settings)}[name]
    return str(ann)


def coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a raw value (toml, env string, flag) into the setting's type (one of its CHOICES, if it has them)."""
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(
            f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r} ({origin}).",
            hint=f"Fix {name} in {origin}.",
        )
    kind = _target_type(name)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{name} cannot be empty ({origin}).", hint=f"Set {name} to a value or remove it.")
    if isinstance(value, str) and value == "" and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("Path"):
            return Path(str(value)).expanduser()
        return str(value)
    except (TypeError, ValueError):
        expected = kind.split(" |")[0]
        raise ConfigError(
            f"{name} must be {expected}, got {value!r} ({origin}).",
            hint=f"Fix {name} in {origin}.",
        ) from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from every layer. `flags` holds only the flags the user gave (None = not given)."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    names = setting_names()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in names}

    config_path = Path(environ.get(ENV_PREFIX + "CONFIG", cwd / CONFIG_FILE))
    if config_path.is_file():
        try:
            table = tomllib.loads(config_path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_path} is not valid TOML: {exc}", hint=f"Fix or remove {config_path}.") from None
        table = table.get("pizzactl", table)
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(
                    f"Unknown setting {key!r} in {config_path}.",
                    hint="Run `pizzactl config show` to see the settings that exist.",
                )
            values[name] = coerce(name, value, str(config_path))
            sources[name] = str(config_path)

    for name in names:
        var = ENV_PREFIX + name.upper()
        if var in environ:
            values[name] = coerce(name, environ[var], var)
            sources[name] = var

    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in names:
            raise ConfigError(f"Unknown setting {name!r}.")  # a bug in a CLI command, not the user's
        values[name] = coerce(name, value, "--" + name.replace("_", "-"))
        sources[name] = "flag"

    return Settings(**values, sources=sources)


def view(cls: type, settings: Settings, **overrides: Any) -> Any:
    """A process's configuration (a dataclass) filled from the settings of the same names."""
    values = {f.name: getattr(settings, f.name) for f in fields(cls) if f.init and hasattr(settings, f.name)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def server_settings(flags: Mapping[str, Any]) -> Settings:
    """Settings for a server started as `python -m ...`: a bad value exits with its hint, not a traceback."""
    try:
        return load_settings(flags)
    except ConfigError as exc:
        sys.stderr.write(f"Error: {exc.message}\n{exc.hint}\n")
        raise SystemExit(EXIT_USER) from None
