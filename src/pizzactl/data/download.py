"""Download a Kaggle dataset once, verify it, and find the folder that holds the classes.

Sources are tried in order: the `kaggle` API when Kaggle credentials exist (Kaggle's own
conventions: KAGGLE_API_TOKEN, ~/.kaggle/access_token, KAGGLE_USERNAME/KAGGLE_KEY,
kaggle.json in KAGGLE_CONFIG_DIR or ~/.kaggle, `kaggle auth login`), then an anonymous public
download with `kagglehub`. A source is a small object with `name` and `fetch(slug, dest) ->
Path` (a zip file or a folder), so tests can swap in a fake at exactly the point where the
network starts.

A finished download is staged in a sibling folder, normalised, hashed with
`load_dataset` and only then renamed into place with a marker file
(`.pizzactl-download.json`: content hash, file count, class folder). The next call
re-hashes the files against that marker and downloads nothing when they match.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pizzactl.console import log
from pizzactl.data.dataset import IMAGE_SUFFIXES, load_dataset
from pizzactl.errors import CredentialsError, DownloadError, PizzaError, require_extra
from pizzactl.files import atomic_dir
from pizzactl.hashing import files_tree_hash

MARKER = ".pizzactl-download.json"
STALL_TIMEOUT = 60.0  # seconds without a new byte before a download counts as hung
_IGNORED_DIRS = {"__MACOSX"}

KAGGLE_JSON_HINT = (
    "put your Kaggle API token in ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json; "
    "create it at https://www.kaggle.com/settings/api) or set KAGGLE_USERNAME and KAGGLE_KEY"
)
OFFLINE_HINT = (
    "or skip the download: pass --data DIR, a folder with one sub-folder per class (DIR/pizza, DIR/not_pizza)"
)


# --- credentials ---------------------------------------------------------------------------


def find_credentials(environ: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """Where Kaggle credentials are, following the kaggle package's own lookup, or None.

    Reads only the environment and files (never the network, never `import kaggle`,
    which authenticates and prints at import time).
    """
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    if environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt"):
        token = home / ".kaggle" / name
        if token.is_file() and token.read_text().strip():
            return str(token)
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    for path in kaggle_json_candidates(environ, home):
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(config, dict) and config.get("username") and config.get("key"):
                return str(path)
    oauth = home / ".kaggle" / "credentials.json"
    if oauth.is_file():
        return str(oauth)
    return None


def kaggle_json_candidates(environ: Mapping[str, str], home: Path) -> list[Path]:
    """kaggle.json locations, in the kaggle package's order."""
    if environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(environ["KAGGLE_CONFIG_DIR"]).expanduser() / "kaggle.json"]
    xdg = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [home / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]


# --- sources -------------------------------------------------------------------------------


class KaggleSource(Protocol):
    """Where dataset files come from. `fetch` puts them under `dest` and returns a zip or a folder."""

    name: str

    def fetch(self, slug: str, dest: Path) -> Path: ...


@contextlib.contextmanager
def _quiet_library_output():
    """Keep third-party prints off stdout (which belongs to --json) and their own progress bars off stderr."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield sink


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _describe(exc: BaseException) -> str:
    """One short line for a library exception (requests' messages run to several lines)."""
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out talking to Kaggle"
    if isinstance(exc, requests.exceptions.ConnectionError):
        if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
            return "cannot reach Kaggle: DNS lookup failed (offline?)"
        if "refused" in text.lower():
            return "cannot reach Kaggle: connection refused (proxy or firewall?)"
        return "cannot reach Kaggle: connection failed"
    lines = text.strip().splitlines()
    first = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {first}".rstrip(": ")


class KaggleApiSource:
    """The official `kaggle` client, used only when credentials exist."""

    name = "kaggle api"

    def __init__(self, environ: Mapping[str, str] | None = None, home: Path | None = None):
        self.environ, self.home = environ, home

    def fetch(self, slug: str, dest: Path) -> Path:
        where = find_credentials(self.environ, self.home)
        if where is None:
            raise CredentialsError("no Kaggle credentials found", hint=KAGGLE_JSON_HINT)
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi  # authenticates (and prints) at import

            api = KaggleApi()
            api.authenticate()
            api.dataset_download_files(slug, path=str(dest), force=True, quiet=True, unzip=False)
        except SystemExit:  # kaggle exits(1) when it finds no usable credentials
            raise CredentialsError(f"Kaggle refused the credentials in {where}", hint=KAGGLE_JSON_HINT) from None
        except Exception as exc:
            status = _http_status(exc)
            if status in (401, 403):
                raise CredentialsError(
                    f"Kaggle refused the credentials in {where} (HTTP {status})", hint=KAGGLE_JSON_HINT
                ) from None
            if status == 404:
                raise DownloadError(
                    f"dataset {slug} not found on Kaggle (HTTP 404)", hint="Check --dataset owner/name."
                ) from None
            raise DownloadError(_describe(exc)) from None
        zips = sorted(dest.glob("*.zip"))
        return zips[0] if zips else dest


class KaggleHubSource:
    """`kagglehub`: public datasets download anonymously (and with credentials when there are some)."""

    name = "kagglehub"

    def fetch(self, slug: str, dest: Path) -> Path:
        try:
            import kagglehub

            path = kagglehub.dataset_download(slug, output_dir=str(dest), force_download=True)
        except Exception as exc:
            status = _http_status(exc)
            if status in (401, 403) or type(exc).__name__ in {"UnauthenticatedError", "CredentialError"}:
                raise CredentialsError(
                    f"Kaggle refused an anonymous download of {slug}", hint=KAGGLE_JSON_HINT
                ) from None
            if status == 404 or type(exc).__name__ == "NotFoundError":
                raise DownloadError(f"dataset {slug} not found on Kaggle", hint="Check --dataset owner/name.") from None
            raise DownloadError(_describe(exc)) from None
        return Path(path)


def default_sources() -> list[KaggleSource]:
    return [KaggleApiSource(), KaggleHubSource()]


# --- result and marker -----------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadResult:
    path: Path  # the folder holding the class sub-folders
    dataset: str
    n_images: int
    data_hash: str
    source: str  # "kaggle api", "kagglehub", "cache" (already there and verified), or a fake's name
    downloaded: bool  # False when a verified copy was already there

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def slug_dir_name(slug: str) -> str:
    return slug.strip("/").replace("/", "__")


def _files(root: Path) -> list[Path]:
    """Every file under root, hidden ones (and those in hidden folders) excepted, in a stable order."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def files_hash(root: Path) -> tuple[str, int]:
    """(sha256 over every file's relative path and bytes, file count): cheap, no image decoding."""
    files = _files(root)
    return files_tree_hash(root, files), len(files)


def _read_marker(dest: Path) -> dict | None:
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def verify(dest: Path) -> DownloadResult | None:
    """The verified download in `dest`, or None if it is absent, incomplete or changed since.

    Re-hashes every file's bytes against the marker (no image decoding: about 0.3 s of CPU
    for the 87 MB of pizza photos), so the recorded data_hash still describes these files.
    """
    marker = _read_marker(dest)
    if not marker or not {"root", "data_hash", "files_hash", "n_files", "n_images"} <= marker.keys():
        return None
    root = (dest / marker["root"]).resolve()
    if not root.is_dir() or dest.resolve() not in (root, *root.parents):
        return None
    if files_hash(root) != (marker["files_hash"], marker["n_files"]):
        return None
    return DownloadResult(
        root, marker.get("dataset", ""), marker["n_images"], marker["data_hash"], "cache", downloaded=False
    )


# --- layout ---------------------------------------------------------------------------------


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS
    )


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())


def find_class_root(top: Path) -> Path:
    """The shallowest folder under `top` with at least two sub-folders that hold images.

    Kaggle zips nest the classes (`pizza_not_pizza/{pizza,not_pizza}`); this finds that folder.
    """
    level = [top]
    while level:
        for folder in level:
            if sum(_has_images(d) for d in _visible_dirs(folder)) >= 2:
                return folder
        level = [d for folder in level for d in _visible_dirs(folder)]
    raise DownloadError(
        f"the download in {top} has no folder with two or more class sub-folders of images",
        hint="Check --dataset; " + OFFLINE_HINT,
    )


def safe_extract(archive: Path, into: Path) -> None:
    """Unzip, refusing members that would land outside `into` (zip slip)."""
    into = into.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                target = (into / member.filename).resolve()
                if into != target and into not in target.parents:
                    raise DownloadError(f"{archive.name} contains an unsafe path: {member.filename}")
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive.name} is not a valid zip file ({exc})", hint="Run again with --force.") from None


# --- download -----------------------------------------------------------------------------


def _tree_bytes(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def _fetch_watched(
    source: KaggleSource, slug: str, staging: Path, stall_timeout: float, on_bytes: Callable[[int], None]
) -> Path:
    """Run `source.fetch` in a worker thread; give up if no byte arrives for `stall_timeout` seconds.

    The kaggle client sets no socket timeouts, so a silently dropped connection would
    otherwise hang forever.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["path"] = source.fetch(slug, staging)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"fetch-{source.name}", daemon=True)
    last_size, last_change = -1, time.monotonic()
    with _quiet_library_output():  # entered and left by this thread, whatever the worker does
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            size = _tree_bytes(staging)
            if size != last_size:
                last_size, last_change = size, time.monotonic()
                on_bytes(size)
            elif time.monotonic() - last_change > stall_timeout:
                raise DownloadError(f"no data for {stall_timeout:g} s (network unreachable or stalled)")
    if "error" in box:
        raise box["error"]
    return box["path"]


def _advance(progress, task, n: int) -> None:
    progress.update(task, completed=n)


def _progress(console_file):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    console = Console(file=console_file)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no bar (nor blank lines) in logs and pipes
    )


def _stage(source: KaggleSource, slug: str, staging: Path, stall_timeout: float, stderr):
    """Fetch `slug` from `source` into `staging`, unpack and hash it, and write its marker there."""

    with _progress(stderr) as progress:
        task = progress.add_task(f"{slug} ({source.name})", total=None)
        got = _fetch_watched(source, slug, staging, stall_timeout, functools.partial(_advance, progress, task))
    if got.is_file() and zipfile.is_zipfile(got):
        log(f"Extracting {got.name} ...")
        unpacked = staging / "unpacked"
        safe_extract(got, unpacked)
        got.unlink()
        got = unpacked
    if not got.is_dir():
        raise DownloadError(f"{source.name} returned {got}, neither a folder nor a zip")
    got = got.resolve()
    if staging.resolve() not in (got, *got.parents):  # a source that ignored dest: copy it in
        shutil.copytree(got, staging / "copied")
        got = staging / "copied"
    root = find_class_root(got)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(root)
    all_files_hash, n_files = files_hash(root)
    marker = {
        "dataset": slug,
        "source": source.name,
        "root": root.resolve().relative_to(staging.resolve()).as_posix(),
        "data_hash": ds.data_hash,
        "n_images": len(ds),
        "files_hash": all_files_hash,
        "n_files": n_files,
        "skipped": [[str(p.relative_to(root)), why] for p, why in ds.skipped],
        "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return ds, marker


def download(
    settings,
    dest: Path | str | None = None,
    force: bool = False,
    *,
    sources: Sequence[KaggleSource] | None = None,
    stall_timeout: float = STALL_TIMEOUT,
) -> DownloadResult:
    """Download `settings.dataset` into `dest` (default: cache_dir/datasets/<slug>), once.

    Returns the folder that holds the class sub-folders. A verified earlier download is
    reused unless `force`; a changed or incomplete one is downloaded again.
    """

    slug = settings.dataset
    if slug.count("/") != 1 or not all(slug.split("/")):
        raise DownloadError(
            f"{slug!r} is not a Kaggle dataset slug", hint="Use owner/name, e.g. carlosrunner/pizza-not-pizza."
        )
    dest = Path(dest).expanduser() if dest else Path(settings.cache_dir) / "datasets" / slug_dir_name(slug)

    if not force and dest.exists():
        found = verify(dest)
        if found is not None:
            return DownloadResult(found.path, slug, found.n_images, found.data_hash, "cache", downloaded=False)
        if (dest / MARKER).exists():
            log(f"[yellow]{dest} changed since it was downloaded (hash or file count differ): downloading again.[/]")

    if dest.is_file() or (dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER).exists()):
        raise DownloadError(
            f"{dest} exists and is not a pizzactl download; refusing to replace it.",
            hint="Choose another --dest (an empty or new folder).",
        )
    if sources is None:
        require_extra("data")  # the Kaggle clients
    sources = default_sources() if sources is None else list(sources)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, PizzaError]] = []
    stderr = sys.stderr
    for attempt, source in enumerate(sources):
        try:
            with atomic_dir(dest) as staging:  # a failed or interrupted source leaves no half folder
                ds, marker = _stage(source, slug, staging, stall_timeout, stderr)
        except PizzaError as exc:
            failures.append((source.name, exc))
            if attempt + 1 < len(sources):
                log(f"[yellow]{source.name}: {exc.message}; trying {sources[attempt + 1].name}.[/]")
            continue
        if ds.skipped:
            log(f"[yellow]{len(ds.skipped)} unreadable file(s) in the download were skipped.[/]")
        return DownloadResult(dest / marker["root"], slug, len(ds), ds.data_hash, source.name, downloaded=True)

    reasons = "; ".join(f"{name}: {exc.message}" for name, exc in failures) or "no download source configured"
    message = f"Could not download {slug} ({reasons})."
    hint = f"To download, {KAGGLE_JSON_HINT}; {OFFLINE_HINT}."
    if failures and all(isinstance(exc, CredentialsError) for _, exc in failures):
        raise CredentialsError(message, hint=hint)
    raise DownloadError(message, hint=hint)


def resolve_data_dir(settings) -> Path:
    """The dataset folder to use: --data, else the downloaded Kaggle dataset (downloading it if needed)."""
    if settings.data_dir is not None:
        return Path(settings.data_dir)
    return download(settings).path
