"""Content hashes: of a file, and of a tree of files (relative paths and bytes).

One copy for every identity pizzactl derives from content: a dataset's `data_hash`, a
download's verification, a weights file's id in the feature cache, the converted-weights
cache. sha256 throughout; files are read in 1 MiB chunks, so a large weights file is never
held in memory whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> bytes:
    """The raw sha256 digest of `data` (what `tree_hash` takes per file)."""
    return hashlib.sha256(data).digest()


def sha256_file(path: Path | str) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_hash(root: Path, files: Iterable[tuple[Path, bytes]]) -> str:
    """sha256 over (path relative to `root`, raw sha256 of the file) for each file, in the given order.

    The caller picks the files and their order (and may have hashed them already while
    reading them for something else); the relative path makes a renamed file a change.
    """
    digest = hashlib.sha256()
    for path, file_digest in files:
        digest.update(Path(path).relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_digest)
    return digest.hexdigest()


def files_tree_hash(root: Path, files: Iterable[Path]) -> str:
    """`tree_hash` of these files, each read and hashed here."""
    return tree_hash(root, ((p, bytes.fromhex(sha256_file(p))) for p in files))
