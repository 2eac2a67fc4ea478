"""Settings: built-in defaults -> ./pizzactl.toml -> PIZZACTL_* environment -> flags.

`load_settings()` resolves every value once and remembers where it came from, so
`pizzactl config show` can explain it. Every path pizzactl writes to (models, runs, cache,
deploy state) is a setting, which is how tests point them at `tmp_path`. The servers read
the same settings: the gateway's and the model server's configurations are views of
`Settings` (`view()`), so a PIZZACTL_* variable means the same thing to every process.

Each setting is declared once, as a `Settings` field made by `setting(...)`: type, default,
help, flag. The CLI's options (`cli.base.option`), the servers' flags (`add_argument`), the env
names and docs/configuration.md's table are made from those declarations. Defaults that depend
on something else (the platform, the deploy state) are derived in one step, `resolve()`, which
`config show` runs too; `Settings.explicit(name)` says whether the user set a value.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pizzactl.errors import EXIT_USER, ConfigError

CONFIG_FILE = "pizzactl.toml"
ENV_PREFIX = "PIZZACTL_"

# The model contract's names and the servers' ports, in one place.
MODEL_NAME = "pizza"  # MODELS/<MODEL_NAME>/<version>/ and /v1/models/<MODEL_NAME>
GATEWAY_PORT = 9696
MODEL_PORT = 8501  # TF Serving's REST port
MODEL_GRPC_PORT = 8500  # TF Serving's gRPC port (its default --port); the builtin server's in images and pods
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # well below Pillow's bomb limit (~89 Mpx), above any phone photo
# What can run a model in the builtin model server (serving.modelserver.runtimes), fastest first;
# auto: the fastest one `pizzactl export` converted and checked.
ModelRuntime = Literal["auto", "litert-int8", "litert", "tensorflow"]


def _home(*parts: str, env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    return Path(base).expanduser() / "pizzactl" if base else Path(fallback).expanduser()


_NO_DEFAULT: Any = object()


def setting(
    default: Any = None,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    flag: str | bool = True,
    used: str = "",
    unset: str | None = None,
    derived: str | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    min: int | None = None,
) -> Any:
    """Declare one setting (a `Settings` field): the one place its default, help and flag live.

    flag: True for `--the-name`, a string for another name, False for none (env and toml only);
    unset: what None means, for a setting whose default is None (or computed);
    derived: the rule that replaces the default from what pizzactl finds (`resolve`).
    """
    meta = {
        "help": help,
        "flag": flag,
        "used": used,
        "unset": unset,
        "derived": derived,
        "choices": choices,
        "secret": secret,
        "min": min,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, repr=not secret, metadata=meta)  # a secret never shows in a repr


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one pizzactl invocation: every setting, declared once.

    Each field is a `setting(...)`: its type (the annotation), default, help, flag and where
    it is used. The CLI's options (`pizzactl.cli.base.option`), the env names, `config show`
    and the table in docs/configuration.md are all generated from these declarations.
    """

    # data
    data_dir: Path | None = setting(
        None,
        "Dataset folder with one sub-folder per class.",
        flag="--data",
        unset="download `dataset`",
        used="data, train, evaluate, up, bench",
    )
    dataset: str = setting("carlosrunner/pizza-not-pizza", "Kaggle dataset slug.", used="data download")
    # training
    backbone: str = setting("efficientnet_lite2", "Backbone name, or several: a,b,c.", used="train")
    weights: str = setting(
        "imagenet",
        "imagenet | none | PATH to a weights file (imagenet, the default, means none for a backbone that "
        "trains from scratch).",
        used="train, bench train",
    )
    epochs: int = setting(30, "Head epochs (on cached features).", used="train")
    fine_tune_epochs: int | None = setting(
        None,
        "Epochs with the top of the backbone unfrozen; 0 turns it off.",
        used="train",
        unset="the backbone's recipe (6 for efficientnet_lite0/1, else 0)",
    )
    augmented_views: int | None = setting(
        None,
        "Cached augmented views per photo, besides it and its mirror (fewer: faster, docs/train.md).",
        used="train",
        unset="the backbone's recipe (8 for efficientnet_lite0/1, else 4)",
        min=0,
    )
    image_size: int | None = setting(
        None,
        "The model's input size (training may use a smaller one, docs/train.md, FixRes).",
        used="train",
        unset="the backbone's recipe",
    )
    batch_size: int = setting(32, "Training batch size.", used="train")
    augment: bool = setting(True, "Random flips/crops/colour.", used="train")
    seed: int = setting(42, "Seed for the validation split and the training.", used="train")
    val_split: float = setting(0.2, "Fraction of each class held out for validation.", used="train", flag=False)
    # where things live
    models_dir: Path = setting(
        Path("models"),
        "Models directory (TF Serving layout MODELS/pizza/<version>).",
        flag="--models",
        used="train, export, evaluate, serve, build, deploy, up",
    )
    runs_dir: Path = setting(Path("runs"), "Run directories.", used="train, runs, export", flag=False)
    cache_dir: Path = setting(
        factory=lambda: _home(env="XDG_CACHE_HOME", fallback="~/.cache/pizzactl"),
        help="Downloads, feature cache, converted weights.",
        used="data, train",
        flag=False,
        unset="`~/.cache/pizzactl` (`$XDG_CACHE_HOME/pizzactl`)",
    )
    state_dir: Path = setting(
        factory=lambda: _home(env="XDG_STATE_HOME", fallback="~/.local/state/pizzactl"),
        help="The deploy and training state files, local logs, outputs on their way home.",
        used="deploy, train --on, status, teardown",
        flag=False,
        unset="`~/.local/state/pizzactl` (`$XDG_STATE_HOME/pizzactl`)",
    )
    # serving and deploying
    host: str = setting(
        "127.0.0.1",
        "Address to listen on (kind, docker: the host address the gateway's port is published on).",
        used="serve, deploy",
    )
    port: int = setting(GATEWAY_PORT, "Gateway port on the host.", used="serve, deploy, up")
    model_port: int = setting(MODEL_PORT, "Model server port.", used="serve, deploy local")
    grpc_port: int = setting(
        0,
        "Model server's gRPC port (TF Serving's PredictionService and ModelService, Open Inference Protocol v2's "
        "GRPCInferenceService); 0: no gRPC.",
        used="model server",
        flag=False,
    )
    allow_private_urls: bool = setting(False, "Let the gateway fetch loopback/private URLs.", used="serve, deploy")
    target: str = setting(
        "kind",
        "kind | docker | local (`up` without one: kind if kind and Docker are here, else local).",
        used="deploy, up",
    )
    model_server: str = setting(
        "tfserving",
        "tfserving | builtin.",
        used="build, deploy",
        derived="builtin when the platform is arm64",
    )
    base_image: str = setting("python:3.11-slim", "Base image of the Python images.", used="build, deploy")
    cluster: str = setting("pizzactl", "kind cluster name.", used="deploy, teardown, train --on")
    namespace: str = setting("pizzactl", "Kubernetes namespace.", used="deploy, teardown", flag=False)
    context: str | None = setting(
        None, "Deploy to this existing kube context instead of kind.", used="deploy", unset="kind"
    )
    registry: str | None = setting(
        None, "Registry to push images to (deploy --context, train --on CONTEXT).", used="build, deploy, train --on"
    )
    pull_secret: str | None = setting(
        None, "Image pull secret in the namespace, for a private --registry.", used="deploy, train --on"
    )
    platform: str | None = setting(
        None,
        "Build for linux/amd64 or linux/arm64.",
        used="build, deploy, train --on",
        unset="the target's: the Docker daemon's, or the cluster nodes'",
    )
    # promote/abort --auto: what a candidate must show on live traffic (deploy/decide.py, docs/deploy.md)
    rollout_min_pairs: int = setting(
        100, "--auto: inputs both versions answered before it decides.", used="deploy --auto", flag=False, min=1
    )
    rollout_min_requests: int = setting(
        100, "--auto: requests the candidate answered before it decides.", used="deploy --auto", flag=False, min=1
    )
    rollout_error_margin: float = setting(
        0.01, "--auto: candidate error rate at most stable's plus this.", used="deploy --auto", flag=False
    )
    rollout_p99_factor: float = setting(
        1.5, "--auto: candidate p99 latency at most stable's times this ...", used="deploy --auto", flag=False
    )
    rollout_p99_slack_ms: float = setting(5.0, "... plus this many milliseconds.", used="deploy --auto", flag=False)
    rollout_min_agreement: float = setting(
        0.9, "--auto: share of compared inputs both versions label alike.", used="deploy --auto", flag=False
    )
    rollout_poll_seconds: float = setting(
        2.0, "--auto: how often it reads the gateway's /rollout.", used="deploy --auto", flag=False
    )
    endpoint: str | None = setting(
        None,
        "Gateway URL to ask.",
        used="predict",
        unset="what deploy recorded, else a local `pizzactl serve`",
        derived="the deployed URL, unless given as a flag",
    )
    log_level: str = setting("info", "The servers' log level.", used="gateway, model server", flag=False)
    # the gateway (python -m pizzactl.serving.gateway)
    model_url: str | None = setting(
        None,
        "Model server base URL, for the gateway.",
        used="gateway",
        flag=False,
        derived="http://127.0.0.1:<model_port>",
    )
    model_protocol: str = setting(
        "rest",
        "How the gateway calls the model server: rest (TF Serving's REST API) or grpc (TF Serving's gRPC "
        "PredictionService, on the builtin server's grpc_port or tensorflow/serving's 8500).",
        used="gateway, bench serve",
        choices=("rest", "grpc"),
    )
    model_grpc_url: str | None = setting(
        None,
        "Model server's gRPC address (host:port) when model_protocol is grpc.",
        used="gateway",
        flag=False,
        unset="model_url's host, port grpc_port (8500 when it is 0)",
    )
    model_name: str = setting(MODEL_NAME, "Model name: MODELS/<name>/<version>/.", used="both servers", flag=False)
    model_timeout: float = setting(2.0, "Seconds until a model-server call becomes a 503.", used="gateway", flag=False)
    # canary (serving/canary.py, docs/serve.md#canary-a-share-of-requests-to-a-new-version)
    canary_percent: float = setting(
        0.0,
        "Share of requests (0-100) the gateway sends to the candidate version; 0: off.",
        used="gateway, deploy",
        flag="--canary",
    )
    canary_version: str = setting(
        "canary", "The candidate: a version label of the model server, or a version number.", used="gateway", flag=False
    )
    stable_version: str = setting(
        "stable",
        "What the other requests go to while a canary runs: a label or a version number.",
        used="gateway",
        flag=False,
    )
    shadow: bool = setting(
        False,
        "Also send every request to the candidate version in the background; users get stable's answers.",
        used="gateway, deploy",
    )
    rollout_plan_file: Path | None = setting(
        None,
        "A JSON file with the four settings above; the gateway re-reads it when it changes (every "
        "poll_seconds) and takes a new canary share, shadow or routes without a restart.",
        used="gateway",
        flag=False,
        unset="the settings above, fixed until a restart",
    )
    rollout_dir: Path | None = setting(
        None,
        "Where the gateway keeps the images two versions labelled differently (shadow or canary), with both answers.",
        used="gateway",
        flag=False,
        unset="`<state_dir>/rollout`",
    )
    rollout_keep: int = setting(
        200,
        "Disagreements kept in rollout_dir (the newest; older ones are deleted); 0: none.",
        used="gateway",
        flag=False,
        min=0,
    )
    max_concurrency: int = setting(64, "Model-server requests in flight.", used="gateway", flag=False)
    max_image_bytes: int = setting(MAX_IMAGE_BYTES, "Bytes per image, else 413.", used="gateway", flag=False)
    max_image_pixels: int = setting(MAX_IMAGE_PIXELS, "Pixels per image, else 413.", used="gateway", flag=False)
    max_request_bytes: int = setting(32 * 1024 * 1024, "Bytes per request body.", used="both servers", flag=False)
    max_batch_items: int = setting(32, "Images per /predict/batch request.", used="gateway", flag=False)
    fetch_timeout: float = setting(10.0, "Seconds to fetch an image URL.", used="gateway", flag=False)
    classes: str | None = setting(
        None,
        "The model's class names, comma-separated, for a model server that does not tell them (TF Serving).",
        used="gateway",
        flag=False,
        unset="the model's",
    )
    access_log: bool = setting(
        False, "A log line per request (/metrics counts them anyway).", used="both servers", flag=False
    )
    # both servers: slow and greedy clients (serving/connections.py, docs/serve.md#slow-and-greedy-clients)
    header_timeout: float = setting(
        20.0,
        "Seconds for a request's line and headers, else 408 (nginx client_header_timeout); 0: none.",
        used="both servers",
        flag=False,
    )
    body_timeout: float = setting(
        20.0,
        "Seconds for a request body, plus 1 s per min_body_rate bytes received, else 408; 0: none.",
        used="both servers",
        flag=False,
    )
    min_body_rate: int = setting(
        500,
        "Bytes/s an upload must keep up to get more time (Apache mod_reqtimeout MinRate); 0: none.",
        used="both servers",
        flag=False,
    )
    keepalive_timeout: float = setting(
        75.0,
        "Seconds an idle kept-alive connection stays open (nginx keepalive_timeout).",
        used="both servers",
        flag=False,
    )
    max_connections: int = setting(
        0,
        "Open connections in total, else 503; 0: half the open-file limit, at most 4096.",
        used="both servers",
        flag=False,
    )
    max_connections_per_client: int = setting(
        128, "Open connections per client address, else 429; 0: no limit.", used="both servers", flag=False
    )
    max_header_bytes: int = setting(32 * 1024, "Request line + headers, else 431.", used="both servers", flag=False)
    # API keys (serving/auth.py, docs/serve.md#api-keys): off unless a key or a digest is set
    api_key: str | None = setting(
        None,
        "API key: serve and deploy require it (passed on only as its SHA-256), predict sends it; "
        "env PIZZACTL_API_KEY keeps it out of the process list.",
        used="serve, deploy, predict",
        secret=True,
    )
    api_key_hashes: str | None = setting(
        None, "More accepted keys, as SHA-256 hex digests, comma-separated.", used="gateway, deploy", flag=False
    )
    metrics_require_key: bool = setting(
        True, "With keys on, /metrics and /rollout need one too.", used="gateway", flag=False
    )
    api_key_rate: float = setting(
        0.0, "Requests per second per key, else 429 with Retry-After; 0: no limit.", used="gateway", flag=False
    )
    api_key_burst: int = setting(20, "Requests a key may send at once within its rate.", used="gateway", flag=False)
    # the model server (python -m pizzactl.serving.modelserver)
    max_batch_size: int = setting(32, "Images per server-side batch.", used="model server", flag=False)
    batch_timeout_ms: float = setting(
        0.0, "How long a free worker waits for company; a busy one batches anyway.", used="model server", flag=False
    )
    batch_threads: int = setting(1, "Batches run at the same time.", used="model server", flag=False)
    poll_seconds: float = setting(
        2.0,
        "How often to look for new versions and a changed model config (gateway: rollout_plan_file).",
        used="both servers",
        flag=False,
    )
    model_config_file: Path | None = setting(
        None,
        "TF Serving's model config (text proto): which versions to serve at once, and their labels.",
        used="model server",
        flag=False,
        unset="latest version only",
    )
    tf_intra_op_threads: int = setting(
        -1,
        "Threads per TensorFlow op, or of the LiteRT interpreter; -1: every usable CPU, 0: TensorFlow's default.",
        used="model server",
        flag=False,
    )
    tf_inter_op_threads: int = setting(
        -1, "TensorFlow ops run at once; -1: 1, 0: TensorFlow's default.", used="model server", flag=False
    )
    litert_split: int = setting(
        0,
        "LiteRT: a batch of several images runs split over this many one-thread interpreters at once "
        "(less CPU per image than one interpreter on several threads); 0: one per usable CPU, 1: no split.",
        used="model server",
        flag=False,
    )
    model_runtime: str = setting(
        "auto",
        "What runs the model: auto = the fastest runtime `pizzactl export` converted and checked, else tensorflow.",
        used="model server, evaluate",
        flag="--runtime",
        choices=get_args(ModelRuntime),
    )
    # admission, in both servers (serving/admission.py): a bounded queue instead of timeouts
    queue_seconds: float = setting(
        5.0,
        "Admission: each server queues what it can serve in this many seconds at its measured throughput "
        "(at least two batches); more is refused at once with 429/503 and Retry-After.",
        used="both servers",
        flag=False,
    )
    max_queue: int = setting(
        0, "Admission: a fixed queue bound in images instead; 0: measured.", used="both servers", flag=False
    )
    # training on Docker or a cluster (`train --on`, docs/train.md)
    gpus: int = setting(
        0,
        "GPUs for the trainer (docker --gpus N, nvidia.com/gpu per pod); more than 0 builds the CUDA image.",
        used="train --on",
        min=0,
    )
    train_cpu: str = setting("2", "CPU request of the training pod.", used="train --on", flag="--cpu")
    train_memory: str = setting(
        "4Gi",
        "Memory request and limit of the training pod (past it the kernel OOM-kills the trainer).",
        used="train --on",
        flag="--memory",
    )
    node_selector: str | None = setting(
        None,
        "KEY=VALUE node labels the training pod needs (repeatable; env/toml: comma-separated).",
        used="train --on",
    )
    tolerations: str | None = setting(
        None,
        "KEY[=VALUE]:EFFECT taints the training pod tolerates (repeatable; env/toml: comma-separated).",
        used="train --on",
        flag="--toleration",
    )
    backoff_limit: int = setting(2, "Failed training pods retried before the Job fails.", used="train --on", min=0)
    train_deadline: int = setting(
        21600,
        "Seconds before the Job is stopped (activeDeadlineSeconds).",
        used="train --on",
        flag="--deadline",
        min=1,
    )
    train_volume_size: str = setting(
        "10Gi", "The training volume (datasets, feature cache, outputs).", used="train --on", flag=False
    )

    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def source(self, name: str) -> str:
        """Where the value came from: "default", a file, PIZZACTL_*, "flag" or "derived (why)"."""
        return self.sources.get(name, DEFAULT)

    def explicit(self, name: str) -> bool:
        """Whether the user set this (file, env or flag), as opposed to a default or a derived value."""
        source = self.source(name)
        return source != DEFAULT and not source.startswith(DERIVED)

    @property
    def model_server_url(self) -> str:
        """Where the gateway finds the model server (`model_url`, derived from `model_port` unless set)."""
        return self.model_url or _local_model_url(self.model_port)

    @property
    def model_server_grpc_address(self) -> str:
        """Where the gateway finds the model server's gRPC port (`model_grpc_url`, else model_url's
        host and grpc_port: 8500, TF Serving's, when grpc_port is 0)."""
        if self.model_grpc_url:
            return self.model_grpc_url.removeprefix("grpc://")
        host = urlsplit(self.model_server_url).hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.grpc_port or 8500}"

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


DEFAULTS = Settings()  # every declared default, for code that takes one as an argument's default
DEFAULT = "default"
DERIVED = "derived"


@dataclass(frozen=True)
class Declaration:
    """One setting as declared in `Settings`: what the CLI options, env names and docs come from."""

    name: str
    type: str
    default: Any
    help: str
    flag: str | None  # e.g. "--models"; None: env and pizzactl.toml only
    used: str
    unset: str | None
    derived: str | None
    choices: tuple[str, ...] | None
    secret: bool
    min: int | None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_bool(self) -> bool:
        return self.type.startswith("bool")

    @property
    def default_text(self) -> str:
        """The default as people read it: the value (or what unset means) and the derived rule."""
        if self.default is None:
            text = f"unset: {self.unset}" if self.unset else "unset"
        else:
            text = self.unset or _show(self.default)  # `unset` describes a computed default (paths)
        return f"{text}; derived: {self.derived}" if self.derived else text


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _declare(f: dataclasses.Field) -> Declaration:
    meta = f.metadata
    flag = meta["flag"]
    if flag is True:
        flag = "--" + f.name.replace("_", "-")
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return Declaration(
        name=f.name,
        type=str(f.type),
        default=default,
        help=meta["help"],
        flag=flag or None,
        used=meta["used"],
        unset=meta["unset"],
        derived=meta["derived"],
        choices=meta["choices"],
        secret=meta["secret"],
        min=meta["min"],
    )


DECLARATIONS: dict[str, Declaration] = {f.name: _declare(f) for f in fields(Settings) if f.name != "sources"}
CHOICES = {d.name: d.choices for d in DECLARATIONS.values() if d.choices}
SECRET_SETTINGS = frozenset(d.name for d in DECLARATIONS.values() if d.secret)  # shown as "(set)", never as their value


def declaration(name: str) -> Declaration:
    return DECLARATIONS[name]


def setting_names() -> list[str]:
    return list(DECLARATIONS)


def _local_model_url(model_port: int) -> str:
    return f"http://127.0.0.1:{model_port}"


def trial_mode(canary_percent: float, shadow: bool) -> str:
    """off | canary | shadow: one way at a time to try a candidate. `deploy` and the gateway apply
    this one rule, so a gateway started by hand with both settings refuses as deploy does."""
    if shadow and canary_percent:
        raise ConfigError(
            "--canary and --shadow are two ways to try a candidate; choose one.",
            hint="--shadow (PIZZACTL_SHADOW): users get stable's answers; "
            "--canary P (PIZZACTL_CANARY_PERCENT): P% of users get the candidate's.",
        )
    return "shadow" if shadow else "canary" if canary_percent else "off"


def _target_type(name: str) -> str:
    return DECLARATIONS[name].type


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

    return resolve(Settings(**values, sources=sources))


def resolve(settings: Settings, *, platform: str | None = None, deployed_url: str | None = None) -> Settings:
    """Replace the defaults that depend on something else: the one place derived defaults are made.

    `load_settings` calls it with what the settings alone say; callers that learn more call it
    again with the facts (deploy: the `platform` it builds for; predict: the `deployed_url` the
    deploy state records), and `pizzactl config show` with this machine's, so what it prints
    is what the verbs use. A value the user set always wins; a derived one says "derived (why)".
    """
    values: dict[str, Any] = {}
    sources = dict(settings.sources)

    def derive(name: str, value: Any, why: str) -> None:
        values[name] = value
        sources[name] = f"{DERIVED} ({why})"

    def restore(name: str) -> None:  # a value derived from an earlier fact, facts changed
        if sources.get(name, DEFAULT).startswith(DERIVED):
            values[name] = DECLARATIONS[name].default
            sources[name] = DEFAULT

    if settings.model_url is None or not settings.explicit("model_url"):
        derive("model_url", _local_model_url(settings.model_port), "model_port")
    platform = settings.platform or platform
    if not settings.explicit("model_server"):
        if platform and platform.endswith("arm64"):
            # tensorflow/serving publishes amd64 images only (tensorflow/serving#1816, #1948)
            derive("model_server", "builtin", f"{platform} has no tensorflow/serving image")
        elif platform:
            restore("model_server")
    if deployed_url and settings.source("endpoint") != "flag":
        derive("endpoint", deployed_url, "the deploy state")  # --endpoint wins; env and toml name a fallback
    if not values:
        return settings
    return dataclasses.replace(settings, **values, sources=sources)


def add_argument(parser: Any, name: str, flag: str | None = None) -> None:
    """A server's argparse flag for a setting (`python -m pizzactl.serving...`): its help, env name
    and default come from the declaration; `flag` when the server names it otherwise (`--port`)."""
    d = DECLARATIONS[name]
    kwargs: dict[str, Any] = {
        "dest": name,
        "help": f"{d.help.rstrip('.')} (env {d.env}; default {d.default_text}).".replace("%", "%%"),
    }
    if d.is_bool:
        kwargs.update(action="store_const", const=True)
    elif d.choices:
        kwargs["choices"] = d.choices
    elif d.type.startswith(("int", "float")):
        kwargs["type"] = int if d.type.startswith("int") else float
    parser.add_argument(flag or d.flag or "--" + name.replace("_", "-"), **kwargs)


DOCS_BEGIN = "<!-- settings table: generated from config.py by `python -m pizzactl.config --docs` -->"
DOCS_END = "<!-- end of settings table -->"


def settings_table() -> str:
    """docs/configuration.md's table of every setting, from the declarations (tests/test_config.py checks it)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("<", "\\<")

    rows = [
        DOCS_BEGIN,
        "",
        "| setting | default | flag | used by | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in DECLARATIONS.values():
        flag = f"`{d.flag}/--no-{d.flag[2:]}`" if d.flag and d.is_bool else f"`{d.flag}`" if d.flag else ""
        rows.append(f"| `{d.name}` | {cell(d.default_text)} | {flag} | {d.used} | {cell(d.help)} |")
    return "\n".join([*rows, "", DOCS_END])


def write_settings_table(path: Path) -> bool:
    """Rewrite the generated table in `path`; True if it changed."""
    text = path.read_text()
    begin, end = text.index(DOCS_BEGIN), text.index(DOCS_END) + len(DOCS_END)
    new = text[:begin] + settings_table() + text[end:]
    if new != text:
        path.write_text(new)
    return new != text


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


if __name__ == "__main__":  # python -m pizzactl.config --docs [docs/configuration.md]
    if sys.argv[1:2] != ["--docs"]:
        sys.exit("usage: python -m pizzactl.config --docs [docs/configuration.md]")
    target = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/configuration.md")
    print(f"{target}: {'rewritten' if write_settings_table(target) else 'up to date'}")
