"""The Docker daemon pizzactl talks to: found as the docker CLI finds it, and what it builds for.

Docker Desktop, Colima and OrbStack have no /var/run/docker.sock; the docker CLI reaches them
through the active context, which the docker SDK does not read. Every part that drives Docker
(builds, the docker target, kind, train --on docker, doctor, up) gets its client here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pizzactl.errors import DeployError, missing_extra
from pizzactl.kube import k8s


@dataclass(frozen=True)
class DockerEndpoint:
    """Where the Docker daemon is, resolved as the docker CLI does it."""

    base_url: str | None  # None: the SDK's default socket
    tls: Any = None
    source: str = "default"  # "DOCKER_HOST", "context NAME" or "default"


def docker_endpoint(environ: Mapping[str, str] | None = None) -> DockerEndpoint:
    """DOCKER_HOST, else the context named by DOCKER_CONTEXT, else config.json's currentContext.

    That is the docker CLI's order (docker/cli cli/command/cli.go resolveContextName). The docker
    SDK reads only DOCKER_HOST (docker/docker-py#3146), so Docker Desktop, Colima and OrbStack,
    which have no /var/run/docker.sock and point a context at their own socket, need this.
    With DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH count as they do for the docker CLI
    and `docker.from_env()` (docker-py's kwargs_from_env: certificates ca.pem, cert.pem, key.pem
    from DOCKER_CERT_PATH, default ~/.docker; DOCKER_TLS_VERIFY set and not empty: verify the daemon).
    """
    environ = os.environ if environ is None else environ
    if environ.get("DOCKER_HOST"):
        from docker.utils import kwargs_from_env

        try:
            tls = kwargs_from_env(environment=dict(environ)).get("tls")
        except Exception as exc:  # docker.errors.TLSParameterError: a certificate file is missing
            raise DeployError(
                f"DOCKER_TLS_VERIFY/DOCKER_CERT_PATH: {short_error(exc)}",
                hint="DOCKER_CERT_PATH must hold ca.pem, cert.pem and key.pem (`docker context inspect` shows "
                "where yours are), or unset DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.",
            ) from None
        return DockerEndpoint(environ["DOCKER_HOST"], tls, source="DOCKER_HOST")
    try:
        from docker.context import ContextAPI
        from docker.context.config import get_current_context_name
    except ImportError:
        raise missing_extra("docker", "deploy") from None

    name = environ.get("DOCKER_CONTEXT") or get_current_context_name()
    if not name or name == "default":
        return DockerEndpoint(None)
    context = ContextAPI.get_context(name)
    if context is None:
        raise DeployError(
            f"The docker context {name!r} does not exist.",
            hint="List contexts with `docker context ls`; switch with `docker context use NAME`.",
        )
    return DockerEndpoint(context.Host, context.TLSConfig, f"context {name}")


def docker_client(timeout: int = 120):
    """A docker SDK client for the active endpoint, or a DeployError that says how to get a daemon."""
    try:
        import docker
    except ImportError:
        raise missing_extra("docker", "deploy") from None
    endpoint = docker_endpoint()
    try:
        client = docker.DockerClient(
            base_url=endpoint.base_url, tls=endpoint.tls or False, version="auto", timeout=timeout
        )
        client.ping()
        return client
    except Exception as exc:  # docker.errors.DockerException, requests ConnectionError, ...
        raise DeployError(
            f"Cannot reach the Docker daemon ({endpoint.source}: {endpoint.base_url or 'the default socket'}): "
            f"{short_error(exc)}",
            hint="Start Docker (e.g. `sudo systemctl start docker`, Docker Desktop, `colima start`); check "
            "`docker context ls` and DOCKER_HOST, then run `pizzactl doctor`.",
        ) from None


def docker_api(timeout: int = 600):
    """The low-level API client of `docker_client` (builds stream through it)."""
    return docker_client(timeout).api


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def daemon_platform(api) -> str:
    """The platform the daemon builds for by default: linux/amd64 or linux/arm64 (Apple Silicon)."""
    arch = str(api.info().get("Architecture") or "")
    return f"linux/{_ARCH.get(arch, arch or 'amd64')}"


def local_platform() -> str:
    """This machine's platform as Docker names it (Docker Desktop runs a Linux VM of the same architecture)."""
    import platform

    arch = platform.machine().lower()
    return f"linux/{_ARCH.get(arch, arch or 'amd64')}"


def planned_platform(settings, context: str | None) -> str:
    """What a --dry-run plans for, reading and changing nothing: --platform; else, for a kube
    context, its nodes' architecture (when they share one); for kind (context None), the Docker
    daemon's, whose container the node is; else this machine's."""
    if settings.platform:
        return str(settings.platform)
    try:
        if context:
            from kubernetes import client

            try:  # never hang a dry run on an unreachable cluster
                found = client.CoreV1Api(k8s.connect(context)).list_node(_request_timeout=10).items
            except Exception as exc:
                raise k8s.api_error(exc, "Listing nodes") from None
            arches = {n.status.node_info.architecture for n in found if n.status and n.status.node_info}
            if len(arches) == 1:
                return f"linux/{arches.pop()}"
        else:
            return daemon_platform(docker_api(10))
    except DeployError:  # no daemon, no cluster, no permission to list nodes: the local guess
        pass
    return local_platform()
