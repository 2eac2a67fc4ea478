"""Two mechanisms every layer needs, written once: replacing a file or folder so that a reader (or a
crash) sees the old one or the new one and never half of one, and waiting for a condition with a
timeout that ends in an error saying what was awaited.

A file is written to a temporary sibling in the same directory (so the rename cannot cross file
systems), flushed with fsync, then renamed over the target with `os.replace`, and the directory
is flushed so the rename itself survives a power cut. A folder is built in a staging sibling and
renamed into place the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from pizzactl.errors import PizzaError, WaitTimeoutError

T = TypeVar("T")


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; a no-op where directories have no fd."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _staging_name(path: Path, tag: str) -> Path:
    # A dot name: never mistaken for the real thing (nor, in MODELS, for a version number).
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on a clean exit it is flushed and renamed over
    `path`, on an exception it is removed and `path` is left as it was. For writers that stream."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_name(path, "tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Replace `path` with `data` (bytes, or text as UTF-8) all at once."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def write_json(path: Path | str, data: Any) -> None:
    """Replace `path` with `data` as indented JSON (anything else as its str), all at once."""
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(dest: Path | str, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside `dest`; on a clean exit it replaces `dest` (whatever was
    there is removed first), on an exception it is removed and `dest` is left as it was.
    `replace=False`: `dest` is meant to be new; the rename fails (OSError) if something non-empty
    took its name meanwhile, and that is never removed.

    Between removing an old `dest` and the rename a reader finds no `dest` at all, never a partial
    one. (A model version is published differently, by `model_store.publish_version`: it renames
    its staging folder to the next free number instead of replacing a name.)
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(dest, "partial")
    staging.mkdir()
    try:
        yield staging
        if replace and dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif replace and (dest.exists() or dest.is_symlink()):
            dest.unlink()
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(dest.parent)


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.5,
    *,
    what: str,
    hint: str = "",
    error: type[PizzaError] | None = WaitTimeoutError,
    sleep: Callable[[float], Any] = time.sleep,
    first: float | None = None,
) -> T:
    """Call `predicate` until it returns something true (returned) or `timeout` seconds pass.

    It is called at least once, and once more at the deadline. On timeout: raise `error` ("Timed
    out after Ns waiting for <what>.", with `hint`), or with `error=None` return the last false
    value so the caller can word its own error. An exception from `predicate` is not caught: it
    ends the wait (that is how a caller stops early, e.g. when the process it waits for died).
    `first`: the first pause, doubled each round up to `interval`, so a wait that is over in a
    moment does not cost a whole interval while a long one still polls every `interval`.
    """
    deadline = time.monotonic() + timeout
    pause = interval if first is None else min(first, interval)
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if error is None:
                return value
            raise error(f"Timed out after {timeout:.0f}s waiting for {what}.", hint=hint or None)
        sleep(min(pause, remaining))
        pause = min(2 * pause, interval)
