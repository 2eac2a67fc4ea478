"""Copy folders into and out of a cluster volume through the API server, as `kubectl cp` does.

A short-lived pod mounts the volume (`files_pod`); tar streams run in it over the pods/exec
subresource (a websocket whose channels 0-3 are stdin, stdout, stderr and the exit status, the
v4/v5.channel.k8s.io protocols). An upload tells the pod how many bytes come (`head -c N | tar
-x`), so it ends without stdin half-close, which only v5 has (Kubernetes 1.30+, KEP-4006); it
unpacks into `DEST.partial` and renames it to DEST, so a folder on the volume is there entirely
or not at all. The exit status is a Status object on channel 3 (kubernetes/kubernetes#61346).

A command can end before it has read all its input (`mkdir` on a full volume): the API server
then sends its stderr and Status and closes the connection at once, and the next write fails
with a reset connection. What the command said and its exit code are what to report, so a
failed write stops the sending and the answer already received is read before giving up.
"""

from __future__ import annotations

import contextlib
import shlex
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pizzactl.console import log
from pizzactl.errors import TrainingError
from pizzactl.files import wait_until
from pizzactl.kube import k8s
from pizzactl.kube.diagnosis import start_problem

CHUNK = 256 * 1024


@contextlib.contextmanager
def files_pod(api_client, doc: dict[str, Any], timeout: float) -> Iterator[str]:
    """Run the files pod until the block ends; yields its name. It is deleted (and gone) after."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    name, namespace = doc["metadata"]["name"], doc["metadata"]["namespace"]
    _delete_pod(core, namespace, name)  # one left by an interrupted copy
    # A bare pod right after its namespace: refused until the namespace's ServiceAccount exists
    # (a Deployment's or Job's controller retries by itself; this pod has no controller).
    k8s.apply(api_client, [doc], admission_wait=min(timeout, 60.0))
    deadline = time.monotonic() + timeout
    try:  # a watch on the pod (kubernetes.watch) would replace this polling; the errors stay the same
        while True:
            pod = k8s.call_api(f"Reading pod {name}", core.read_namespaced_pod, name, namespace)
            phase = pod.status.phase if pod is not None and pod.status else None
            if phase == "Running":
                break
            if pod is not None and phase == "Pending":
                problem, hopeless, hint = start_problem(core, namespace, pod)
                if problem and (hopeless or time.monotonic() >= deadline):
                    raise TrainingError(
                        f"The pod that copies files to the training volume cannot start: {problem}", hint=hint
                    )
            if phase in ("Failed", "Succeeded") or time.monotonic() >= deadline:
                raise TrainingError(
                    f"The pod that copies files to the training volume did not start in {timeout:.0f}s (phase {phase}).",
                    hint=f"`kubectl describe pod -n {namespace} {name}` says why.",
                )
            time.sleep(0.5)
        yield name
    finally:
        _delete_pod(core, namespace, name)


def _delete_pod(core, namespace: str, name: str, wait: float = 60.0) -> None:
    """Delete the pod and wait until it is gone: a ReadWriteOnce volume is free for the Job only then."""
    if (
        k8s.call_api(f"Deleting pod {name}", core.delete_namespaced_pod, name, namespace, grace_period_seconds=0)
        is None
    ):
        return
    # A watch on the pod (kubernetes.watch) would wake at the deletion instead of polling.
    wait_until(
        lambda: k8s.call_api(f"Reading pod {name}", core.read_namespaced_pod, name, namespace) is None,
        wait,
        0.5,
        what=f"pod {name} to be deleted",
        error=None,  # still there: the caller's next step says what holds the volume
    )


def run(
    api_client,
    namespace: str,
    pod: str,
    container: str,
    command: list[str],
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> int:
    """Run `command` in the pod, streaming stdin in and stdout out; its exit code."""
    from kubernetes import client
    from kubernetes.stream import stream

    core = client.CoreV1Api(api_client)
    try:
        ws = stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=command,
            stdin=stdin is not None,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
            binary=True,
        )
    except Exception as exc:
        raise k8s.api_error(exc, f"Running {command[0]} in pod {pod}") from None
    errors = bytearray()
    broken: Exception | None = None  # the connection failed under us
    try:
        if stdin is not None:
            try:
                for chunk in iter(lambda: stdin.read(CHUNK), b""):
                    ws.write_stdin(chunk)
                    _drain(ws, stdout, errors, 0)
                ws.close_channel(0)  # v5: end of input; v4 ignores it (the command reads N bytes)
            except Exception as exc:  # the command ended early and the server closed: read what it said
                broken = exc
        try:
            while ws.is_open():
                _drain(ws, stdout, errors, 1.0)
            _drain(ws, stdout, errors, 0)
        except Exception as exc:
            broken = broken or exc
        code = _returncode(ws)
    finally:
        with contextlib.suppress(Exception):
            ws.close()
    if code != 0:
        text = errors.decode(errors="replace").strip()
        exit_ = f"exit {code}" if code >= 0 else "no exit status"
        lost = f" (the connection broke while sending: {type(broken).__name__}: {broken})" if broken else ""
        raise TrainingError(
            f"`{shlex.join(command)[:200]}` failed in pod {pod} ({exit_}){lost}: {text[-1500:]}".rstrip(": "),
            hint=_hint(text),
        )
    return code


def _hint(stderr: str) -> str:
    if "No space left on device" in stderr:
        return (
            "The training volume is full. `pizzactl teardown` deletes it (uploaded datasets, feature cache, "
            "outputs) and the next run makes a new one; for a bigger one set train_volume_size (PIZZACTL_"
            "TRAIN_VOLUME_SIZE, default 10Gi) before that run."
        )
    return "Check the training volume (`kubectl describe pvc -n pizzactl pizzactl-train`) and retry."


def _drain(ws, stdout: IO[bytes] | None, errors: bytearray, timeout: float) -> None:
    try:
        ws.update(timeout=timeout)
    finally:  # what arrived before the connection failed is kept
        out = _take(ws, 1)
        if out and stdout is not None:
            stdout.write(out)
        errors.extend(_take(ws, 2))


def _take(ws, channel: int) -> bytes:
    """What the client has buffered on a channel (b"" when the connection fails reading more)."""
    try:
        data = ws.read_channel(channel, timeout=0)
    except Exception:
        return b""
    return data.encode() if isinstance(data, str) else bytes(data or b"")


def _returncode(ws) -> int:
    """The exit code in the Status on channel 3 (read even when the close frame never came); -1
    without one (the connection broke first)."""
    import yaml

    try:
        text = _take(ws, 3)
        status = yaml.safe_load(text) if text else None
        if not isinstance(status, dict):
            return -1
        if status.get("status") == "Success":
            return 0
        return int(status["details"]["causes"][0]["message"])
    except (TypeError, KeyError, IndexError, ValueError, yaml.YAMLError):
        return -1


def exists(api_client, namespace: str, pod: str, container: str, path: str) -> bool:
    try:
        run(api_client, namespace, pod, container, ["test", "-e", path])
        return True
    except TrainingError:
        return False


def upload(api_client, namespace: str, pod: str, container: str, files: Iterable[tuple[Path, str]], dest: str) -> int:
    """Put `files` ((local path, name in DEST)) into the folder DEST on the volume, all or nothing; bytes sent."""
    with tempfile.TemporaryFile() as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path, name in files:
                tar.add(path, arcname=name, recursive=False)
        size = archive.tell()
        archive.seek(0)
        partial = shlex.quote(dest + ".partial")
        target = shlex.quote(dest)
        script = (
            f"set -e; rm -rf {partial}; mkdir -p {partial}; head -c {size} | tar -x -f - -C {partial}; "
            f"rm -rf {target}; mv {partial} {target}"
        )
        log(f"Uploading {size / 1e6:.1f} MB to the training volume ({dest}) ...")
        run(api_client, namespace, pod, container, ["sh", "-c", script], stdin=archive)
        return size


def download(api_client, namespace: str, pod: str, container: str, src: str, dest: Path) -> None:
    """Copy the folder SRC on the volume into the local folder DEST (created)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as archive:
        run(api_client, namespace, pod, container, ["tar", "-c", "-f", "-", "-C", src, "."], stdout=archive)
        archive.seek(0)
        try:
            with tarfile.open(fileobj=archive, mode="r") as tar:
                tar.extractall(dest, filter="data")  # no absolute paths, no links out of DEST
        except tarfile.TarError as exc:
            raise TrainingError(
                f"The results copied from the training volume are not a complete archive ({exc}).",
                hint="Collect them again: `pizzactl train --on ... --attach`.",
            ) from None


def remove(api_client, namespace: str, pod: str, container: str, path: str) -> None:
    run(api_client, namespace, pod, container, ["rm", "-rf", path])
