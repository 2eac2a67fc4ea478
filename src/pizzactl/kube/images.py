"""Build the gateway, model server and trainer images with content-derived tags (never :latest).

The build context is made from the *installed* package (its source, the Dockerfiles shipped
as package data and a pyproject.toml generated from the package metadata), so `pizzactl
build` works the same from a clone and after `pip install pizzactl`. Tags hash exactly what
goes into the image: the same code and model give the same tag, so a deploy of unchanged
content is a no-op for Kubernetes, and a changed model always rolls out.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pizzactl
from pizzactl import __version__
from pizzactl.config import MODEL_NAME, Settings, resolve
from pizzactl.console import err, log
from pizzactl.errors import DeployError, ModelNotFoundError, UsageError
from pizzactl.kube.docker_daemon import daemon_platform, docker_api, short_error
from pizzactl.kube.shipped import MODEL_CONFIG_IN_IMAGE, shipped_dir
from pizzactl.model.store import latest_version_dir, model_base

PACKAGE_DIR = Path(pizzactl.__file__).resolve().parent
DOCKER_DIR = shipped_dir("docker")
MODEL_SERVERS = ("tfserving", "builtin")
TENSORFLOW_VERSION = "2.21.0"
GATEWAY_REPO = "pizzactl-gateway"
MODEL_REPO = "pizzactl-model"
TRAINER_REPO = "pizzactl-trainer"
TRAINER_DOCKERFILE = "docker/trainer.Dockerfile"
# Not "pizzactl=1": containers inherit image labels, and that one marks what `teardown` removes.
LABELS = {"dev.pizzactl.image": "1", "org.opencontainers.image.version": __version__}
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info")
_SKIP_IN_PACKAGE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info", "k8s", "docker")


@dataclass(frozen=True)
class Images:
    """What `build` produced: full image references (with registry when pushed) and sizes."""

    gateway_image: str
    model_image: str
    model_server: str
    model_version: int
    gateway_size: int = 0
    model_size: int = 0
    pushed: bool = False
    platform: str = "linux/amd64"

    def as_dict(self) -> dict[str, Any]:
        return {
            "gateway_image": self.gateway_image,
            "model_image": self.model_image,
            "model_server": self.model_server,
            "model_version": self.model_version,
            "gateway_size": self.gateway_size,
            "model_size": self.model_size,
            "pushed": self.pushed,
            "platform": self.platform,
        }


# --- docker connection -----------------------------------------------------------------------


# --- model servers -------------------------------------------------------------------------------


def choose_model_server(settings: Settings, platform: str) -> str:
    """The model server for a platform: TF Serving on amd64, the builtin one on arm64.

    tensorflow/serving publishes amd64 images only (tensorflow/serving#1816, #1948: on Apple
    Silicon it runs under emulation at best), so on arm64 the builtin server is the default
    (derived in `config.resolve`, as `config show` prints it) and TF Serving, asked for
    explicitly, is refused with the way out.
    """
    chosen = resolve(settings, platform=platform).model_server
    if chosen == "tfserving" and platform.endswith("arm64"):
        raise UsageError(
            f"The tensorflow/serving image has no {platform} build.",
            hint="Use --model-server builtin (pizzactl's own TF Serving-compatible server), "
            "or build for amd64 with --platform linux/amd64.",
        )
    return chosen


def tensorflow_requirement(platform: str) -> str:
    """tensorflow-cpu has x86_64 wheels only; on aarch64 the `tensorflow` wheel is CPU-only anyway."""
    return (
        f"tensorflow=={TENSORFLOW_VERSION}" if platform.endswith("arm64") else f"tensorflow-cpu=={TENSORFLOW_VERSION}"
    )


# --- build contexts -----------------------------------------------------------------------------


def project_requirements(extra: str | None = None) -> list[str]:
    """The package's own dependencies (extra=None) or one extra's, from its installed metadata."""
    try:
        reqs = importlib.metadata.requires("pizzactl") or []
    except importlib.metadata.PackageNotFoundError:  # running from an uninstalled tree
        reqs = []
    found = []
    for req in reqs:
        text, _, marker = req.partition(";")
        marker_extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if (marker_extra.group(1) if marker_extra else None) == extra:
            found.append(text.strip() if extra else req)
    return found


# The extra pyproject.toml declares for each image (docker/requirements.py reads it in the build).
EXTRA_OF_IMAGE = {"gateway": "gateway", "builtin": "serve", "trainer": "train-libs"}
_SELF = re.compile(r"^pizzactl\s*\[([^\]]*)\]")


def _with_nested(extra: str) -> tuple[str, ...]:
    """`extra` and every extra it names as `pizzactl[...]`, so the generated pyproject holds them all."""
    found: list[str] = []
    todo = [extra]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.append(name)
        for req in project_requirements(name):
            nested = _SELF.match(req)
            if nested:
                todo += [n.strip() for n in nested.group(1).split(",")]
    return tuple(found)


def _pyproject_text(extras: tuple[str, ...] = ()) -> str:
    def listed(reqs: list[str]) -> str:
        return "[\n" + "\n".join(f"  {json.dumps(r)}," for r in reqs) + "\n]"

    text = (
        "# Generated by pizzactl build: the package's dependencies, for the images' pip layer.\n"
        "[project]\n"
        'name = "pizzactl"\n'
        f'version = "{__version__}"\n'
        f"dependencies = {listed(project_requirements())}\n"
    )
    if extras:
        text += "\n[project.optional-dependencies]\n"
        text += "".join(f"{extra} = {listed(project_requirements(extra))}\n" for extra in extras)
    return text


@contextmanager
def build_context(
    kind: str, model_dir: Path | None = None, *, more_versions: tuple[Path, ...] = (), model_config: str | None = None
) -> Iterator[Path]:
    """A temporary build context for one image: pyproject, package source, Dockerfiles, model.

    kind: "gateway" | "builtin" | "tfserving" | "trainer". `more_versions` and `model_config`: the
    other versions a pinned or canary release serves and the model config naming them (all under
    models/pizza/). The layout is a clone's (src/pizzactl, docker/),
    so one Dockerfile serves `pizzactl build` and `docker build -f docker/...` alike. The context
    holds nothing else (no dataset, no runs, no credentials). Everything in it is made
    world-readable: COPY keeps modes, and a model exported under umask 077 would be unreadable
    to the images' non-root users.
    """
    with tempfile.TemporaryDirectory(prefix=f"pizzactl-build-{kind}-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(DOCKER_DIR, ctx / "docker", ignore=_SKIP)
        if kind in ("gateway", "builtin", "trainer"):
            (ctx / "pyproject.toml").write_text(_pyproject_text(_with_nested(EXTRA_OF_IMAGE[kind])))
            shutil.copytree(PACKAGE_DIR, ctx / "src" / "pizzactl", ignore=_SKIP_IN_PACKAGE)
        if kind in ("builtin", "tfserving"):
            if model_dir is None:
                raise ModelNotFoundError("No model to put in the image.")
            for version_dir in (model_dir, *more_versions):
                shutil.copytree(version_dir, ctx / "models" / MODEL_NAME / version_dir.name, ignore=_SKIP)
            if model_config is not None:
                (ctx / "models" / MODEL_NAME / Path(MODEL_CONFIG_IN_IMAGE).name).write_text(model_config)
        (ctx / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
        _world_readable(ctx)
        yield ctx


def _world_readable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | (0o755 if path.is_dir() else 0o644))


def context_hash(ctx: Path, *extra: str) -> str:
    """sha256 over every file's relative path and bytes (and any extra strings): the image tag."""
    h = hashlib.sha256()
    for value in extra:
        h.update(value.encode() + b"\0")
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        h.update(path.relative_to(ctx).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def image_ref(repo: str, tag: str, registry: str | None) -> str:
    return f"{registry.rstrip('/')}/{repo}:{tag}" if registry else f"{repo}:{tag}"


# --- building -----------------------------------------------------------------------------------


def _model_version_dir(settings: Settings) -> Path:
    return latest_version_dir(settings.models_dir)


@dataclass(frozen=True)
class Pinned:
    """Specific versions in one model image, and the TF Serving model config (base path
    MODEL_BASE_IN_IMAGE) the model server starts with: a canary or shadow trial, or a pinned
    version (deploy/rollout.py makes it from its Plan). `versions[0]` is what the image is named by."""

    versions: tuple[int, ...]
    model_config: str


def build(
    settings: Settings, push: bool = False, *, model_dir: Path | None = None, pinned: Pinned | None = None
) -> Images:
    """Build (and with `push`, push to `settings.registry`) the gateway and model server images.

    The model is the latest version under `settings.models_dir` (or `model_dir`, a version
    directory), or with `pinned` its versions and model config; the platform is
    `settings.platform`, else the daemon's own. Progress goes to stderr; the result says which
    images and how big they are.
    """
    if push and not settings.registry:
        raise UsageError("Pushing needs a registry.", hint="Pass --push REGISTRY, e.g. --push ghcr.io/you.")
    api = docker_api()
    platform = settings.platform or daemon_platform(api)
    images = _images(settings, push, model_dir, api, platform, pinned)
    if push:
        for ref in (images.gateway_image, images.model_image):
            _push(api, ref)
    return images


def plan_images(
    settings: Settings, *, model_dir: Path | None = None, platform: str | None = None, pinned: Pinned | None = None
) -> Images:
    """The image references `build` would produce, without Docker (for --dry-run)."""
    return _images(settings, False, model_dir, None, settings.platform or platform or "linux/amd64", pinned)


def _version_dirs(settings: Settings, model_dir: Path | None, pinned: Pinned | None) -> list[Path]:
    if pinned is not None:
        return [model_base(settings.models_dir) / str(v) for v in pinned.versions]
    return [Path(model_dir) if model_dir is not None else _model_version_dir(settings)]


def _images(
    settings: Settings, push: bool, model_dir: Path | None, api, platform: str, pinned: Pinned | None = None
) -> Images:
    if settings.model_server not in MODEL_SERVERS:
        raise UsageError(
            f"Unknown model server {settings.model_server!r}.", hint="Use --model-server tfserving or builtin."
        )
    kind = choose_model_server(settings, platform)
    version_dirs = _version_dirs(settings, model_dir, pinned)
    for version_dir in version_dirs:
        if not version_dir.name.isdigit() or not (version_dir / "saved_model.pb").is_file():
            raise ModelNotFoundError(
                f"{version_dir} is not an exported model version (no saved_model.pb).",
                hint="Train and export first: `pizzactl train`, or `pizzactl export RUN`.",
            )
    version_dir = version_dirs[0]
    version = int(version_dir.name)
    registry = settings.registry
    # The platform joins the tag only when it is not amd64, so existing amd64 tags stay stable.
    extra = [] if platform == "linux/amd64" else [platform]

    with build_context("gateway") as ctx:
        tag = f"{__version__}-{context_hash(ctx, settings.base_image, json.dumps(LABELS), *extra)[:12]}"
        gateway = image_ref(GATEWAY_REPO, tag, registry)
        if api is not None:
            _build(
                api, ctx, "docker/gateway.Dockerfile", gateway, {"BASE_IMAGE": settings.base_image}, settings.platform
            )

    config = pinned.model_config if pinned is not None else None
    with build_context(kind, version_dir, more_versions=tuple(version_dirs[1:]), model_config=config) as ctx:
        model_args = {"MODEL_DIR": f"models/pizza/{version}", "MODEL_VERSION": str(version)}
        if pinned is not None:  # the whole models/pizza folder: every version and the model config
            model_args = {"MODEL_DIR": "models/pizza", "MODEL_VERSION": "."}
        if kind == "builtin":
            dockerfile = "docker/modelserver.Dockerfile"
            model_args["BASE_IMAGE"] = settings.base_image
            model_args["TENSORFLOW"] = tensorflow_requirement(platform)
        else:
            dockerfile = "docker/model.Dockerfile"
        digest = context_hash(
            ctx, dockerfile, json.dumps(LABELS), *sorted(f"{k}={v}" for k, v in model_args.items()), *extra
        )
        named = "-".join(str(v) for v in pinned.versions) if pinned is not None else str(version)
        model = image_ref(MODEL_REPO, f"v{named}-{kind}-{digest[:12]}", registry)
        if api is not None:
            _build(api, ctx, dockerfile, model, model_args, settings.platform)

    return Images(
        gateway_image=gateway,
        model_image=model,
        model_server=kind,
        model_version=version,
        gateway_size=image_size(api, gateway) if api is not None else 0,
        model_size=image_size(api, model) if api is not None else 0,
        pushed=push,
        platform=platform,
    )


# --- the trainer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerImage:
    """The image `train --on` runs: `pizzactl train` with TensorFlow, CPU or CUDA."""

    image: str
    platform: str
    gpu: bool
    size: int = 0
    pushed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "platform": self.platform,
            "gpu": self.gpu,
            "size": self.size,
            "pushed": self.pushed,
        }


def trainer_tensorflow(platform: str, gpu: bool) -> str:
    """TensorFlow for the trainer: CUDA from pip with --gpu (tensorflow.org/install/pip: `tensorflow[and-cuda]`
    on Linux), else the CPU build for the platform."""
    return f"tensorflow[and-cuda]=={TENSORFLOW_VERSION}" if gpu else tensorflow_requirement(platform)


def build_trainer(settings: Settings, *, gpu: bool = False, push: bool = False) -> TrainerImage:
    """Build (and with `push`, push to settings.registry) the trainer image; a built tag is reused."""
    if push and not settings.registry:
        raise UsageError("Pushing needs a registry.", hint="Pass --registry REGISTRY, e.g. ghcr.io/you.")
    api = docker_api()
    platform = settings.platform or daemon_platform(api)
    image = _trainer(settings, gpu, api, platform)
    if push:
        _push(api, image.image)
    return TrainerImage(image.image, platform, gpu, image_size(api, image.image), push)


def plan_trainer(settings: Settings, *, gpu: bool = False, platform: str | None = None) -> TrainerImage:
    """The trainer reference `build_trainer` would produce, without Docker (for --dry-run)."""
    return _trainer(settings, gpu, None, settings.platform or platform or "linux/amd64")


def _trainer(settings: Settings, gpu: bool, api, platform: str) -> TrainerImage:
    args = {"BASE_IMAGE": settings.base_image, "TENSORFLOW": trainer_tensorflow(platform, gpu)}
    extra = [] if platform == "linux/amd64" else [platform]
    with build_context("trainer") as ctx:
        digest = context_hash(
            ctx, TRAINER_DOCKERFILE, json.dumps(LABELS), *sorted(f"{k}={v}" for k, v in args.items()), *extra
        )
        ref = image_ref(TRAINER_REPO, f"{__version__}-{'gpu' if gpu else 'cpu'}-{digest[:12]}", settings.registry)
        if api is not None:
            _build(api, ctx, TRAINER_DOCKERFILE, ref, args, settings.platform)
    return TrainerImage(ref, platform, gpu)


def image_size(api, ref: str) -> int:
    try:
        return int(api.inspect_image(ref).get("Size") or 0)
    except Exception:
        return 0


def image_exists(api, ref: str) -> bool:
    try:
        api.inspect_image(ref)
        return True
    except Exception:
        return False


def _build(api, ctx: Path, dockerfile: str, tag: str, buildargs: dict[str, str], platform: str | None) -> None:
    """One `docker build`, streaming its output to stderr; a failure raises DeployError with the tail."""
    from rich.markup import escape  # build output holds brackets: uvicorn[standard], [notice] ...

    if image_exists(api, tag):
        log(f"[green]✓[/] {tag} (already built)")
        return
    log(f"[bold]Building[/] {tag}")
    tail: list[str] = []
    try:
        stream = api.build(
            path=str(ctx),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=buildargs,
            labels=LABELS,
            network_mode="host",  # pip reaches PyPI through the host's network and proxy settings
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            platform=platform,
        )
        for chunk in stream:
            if "error" in chunk:
                raise DeployError(
                    f"Building {tag} failed: {chunk['error'].strip()}",
                    hint=_build_hint(chunk["error"], "\n".join(tail[-15:])),
                )
            line = chunk.get("stream", "")
            if line.strip():
                tail.append(line.rstrip())
                err.print(f"  [dim]{escape(line.rstrip())}[/]", highlight=False)
    except DeployError:
        raise
    except Exception as exc:  # docker.errors.APIError, connection reset
        raise DeployError(
            f"Building {tag} failed: {short_error(exc)}", hint="Run `pizzactl doctor`, then retry."
        ) from None
    log(f"[green]✓[/] built {tag}")


def _build_hint(error: str, tail: str) -> str:
    text = error + tail
    if re.search(
        r"pull access denied|not found: manifest unknown|manifest for .* not found|no such host|"
        r"failed to resolve|toomanyrequests|Get \"https://registry",
        text,
    ):
        return (
            "The base image could not be pulled. Pull it yourself (`docker pull IMAGE`), pass "
            "--base-image, or use --model-server builtin if tensorflow/serving is unreachable."
        )
    if "pip" in text or "Could not find a version" in text:
        return "pip failed inside the build: check that this machine reaches PyPI (proxy settings in /etc/pip.conf)."
    return "Read the build output above; `pizzactl doctor` checks the Docker daemon."


def _push(api, ref: str) -> None:
    repo, tag = ref.rsplit(":", 1)
    log(f"[bold]Pushing[/] {ref}")
    for chunk in api.push(repo, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise DeployError(
                f"Pushing {ref} failed: {chunk['error']}",
                hint=f"Log in first (`docker login {ref.split('/')[0]}`) and check the registry name.",
            )
    log(f"[green]✓[/] pushed {ref}")
