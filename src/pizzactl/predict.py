"""`pizzactl predict`: ask the deployed gateway about files, directories and URLs.

Files are uploaded (multipart field `file`); URLs are passed as `{"url": ...}` so the gateway
fetches them (with its SSRF checks); a directory means every image under it. Requests run in
a small thread pool over one HTTP connection pool. The endpoint is `--endpoint`, else what
`pizzactl deploy` recorded, else the `endpoint` setting, else a gateway answering on
localhost at the configured port (`pizzactl serve`).
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pizzactl import httpclient
from pizzactl.config import resolve
from pizzactl.console import err
from pizzactl.deploy.state import deployed_url
from pizzactl.errors import EndpointError, NotDeployedError, UsageError
from pizzactl.explain import check_can_explain, explain_sources
from pizzactl.results import Result
from pizzactl.serving.processes import http_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
PREDICT_PATH = "/predict"
TIMEOUT = 30.0  # seconds per request (the gateway may fetch a URL first)


@dataclass(frozen=True)
class Source:
    """One thing to classify: a local file or a URL (kind 'file' | 'url' | 'missing')."""

    text: str  # as the user wrote it (or the file found in a directory)
    kind: str
    path: Path | None = None


@dataclass(frozen=True, eq=False)
class Prediction(Result):
    """The answer for one image: its label and probabilities, or (`error` set) why there is none.

    `extra` holds what `--explain` adds (`explanation`: the overlay's path, or `explanation_error`).
    """

    source: str
    label: str | None = None
    probability: float | None = None  # P(label), except for a binary model's negative class: P(positive)
    model_version: int | None = None
    probabilities: Mapping[str, float] | None = None  # {class: p}, when the gateway sends them
    error: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def of(cls, answer: Mapping[str, Any]) -> Prediction:
        known = ("source", "label", "probability", "model_version", "probabilities", "error")
        return cls(
            **{k: answer[k] for k in known if k in answer}, extra={k: v for k, v in answer.items() if k not in known}
        )

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source}
        if self.error is not None:
            d["error"] = self.error
        else:
            d.update(label=self.label, probability=self.probability)
            if self.model_version is not None:
                d["model_version"] = self.model_version
            if self.probabilities is not None:
                d["probabilities"] = self.probabilities
        d.update(self.extra)
        return d


def is_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in ("http", "https")


def expand_sources(sources: Iterable[str]) -> list[Source]:
    """Files stay files, directories become the images under them (sorted), URLs stay URLs."""
    items: list[Source] = []
    for text in sources:
        if is_url(text):
            items.append(Source(text, "url"))
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            items.extend(Source(str(p), "file", p) for p in found)
        elif path.is_file():
            items.append(Source(text, "file", path))
        else:
            items.append(Source(text, "missing", path))
    return items


def resolve_endpoint(settings) -> str:
    """--endpoint, else the deployed URL, else the endpoint setting, else a local `pizzactl serve`.

    The first three are `config.resolve`'s rule (what `config show` prints); the last needs a probe."""
    settings = resolve(settings, deployed_url=deployed_url(settings))
    if settings.endpoint:
        return normalize_endpoint(settings.endpoint)

    local = http_url(settings.host, settings.port)
    if _answers(local):
        return local
    raise NotDeployedError(
        "Nothing is deployed, so there is no endpoint to ask.",
        hint=f"Deploy first (`pizzactl deploy --target local`), or pass --endpoint URL (e.g. {local} for `pizzactl serve`).",
    )


def normalize_endpoint(url: str) -> str:
    """The gateway's base URL: accepts `host:port`, a trailing slash or a trailing /predict."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(f"{url!r} is not an http(s) URL.", hint="Pass --endpoint like http://127.0.0.1:9696.")
    url = url.rstrip("/")
    if url.endswith(PREDICT_PATH):
        url = url[: -len(PREDICT_PATH)]
    return url


def _answers(url: str) -> bool:
    response = httpclient.get(url + "/readyz", timeout=0.5)
    return response is not None and response.status_code == 200


def _error_text(response) -> str:
    """The gateway's `{"error": {"code", "message"}}` (or anything else) as one line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        error = body["error"]
        if isinstance(error, dict):
            text = error.get("message") or str(error)
            code = error.get("code")
            return f"{text} ({code}, HTTP {response.status_code})" if code else f"{text} (HTTP {response.status_code})"
        return f"{error} (HTTP {response.status_code})"
    if isinstance(body, dict) and "detail" in body:
        return f"{body['detail']} (HTTP {response.status_code})"
    snippet = response.text.strip().replace("\n", " ")[:200]
    return f"HTTP {response.status_code}: {snippet}" if snippet else f"HTTP {response.status_code}"


class _Unreachable(Exception):
    pass


def _predict_one(client, endpoint: str, item: Source) -> dict[str, Any]:
    import requests

    timeout = (5.0, TIMEOUT)  # (connect, read)
    if item.kind == "missing":
        return {"source": item.text, "error": "no such file or directory"}
    try:
        if item.kind == "url":
            response = client.post(endpoint + PREDICT_PATH, json={"url": item.text}, timeout=timeout)
        else:
            assert item.path is not None  # a "file" source always has its path
            try:
                data = item.path.read_bytes()
            except OSError as exc:
                return {"source": item.text, "error": f"cannot read the file: {exc.strerror or exc}"}
            response = client.post(
                endpoint + PREDICT_PATH,
                files={"file": (item.path.name, data, _content_type(item.path))},
                timeout=timeout,
            )
    except requests.RequestException as exc:
        if httpclient.connect_failed(exc):
            raise _Unreachable(str(exc) or type(exc).__name__) from None
        return {"source": item.text, "error": f"{type(exc).__name__}: {exc}"}
    if response.status_code != 200:
        return {"source": item.text, "error": _error_text(response)}
    try:
        body = response.json()
        result = {"source": item.text, "label": body["label"], "probability": float(body["probability"])}
    except (ValueError, KeyError, TypeError):
        return {"source": item.text, "error": f"unexpected answer from {endpoint}: {response.text[:200]}"}
    if "model_version" in body:
        result["model_version"] = body["model_version"]
    if isinstance(body.get("probabilities"), dict):
        result["probabilities"] = {str(k): float(v) for k, v in body["probabilities"].items()}
    return result


def _content_type(path: Path) -> str:
    import mimetypes

    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries an API key to the gateway (serving/auth.py), or none."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def classify(
    endpoint: str,
    items: Sequence[Source],
    concurrency: int = 8,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    api_key: str | None = None,
) -> list[dict[str, Any]]:
    """Results in the order of `items`. Raises EndpointError when the gateway cannot be reached at all.

    `api_key` goes in `Authorization: Bearer` (never in a URL, never printed)."""
    concurrency = max(1, int(concurrency))
    results: list[dict[str, Any] | None] = [None] * len(items)
    unreachable = threading.Event()
    reason: list[str] = []

    def work(index: int) -> None:
        if unreachable.is_set():
            results[index] = {"source": items[index].text, "error": f"cannot reach {endpoint}"}
        else:
            try:
                results[index] = _predict_one(client, endpoint, items[index])
            except _Unreachable as exc:
                reason.append(str(exc))
                unreachable.set()
                results[index] = {"source": items[index].text, "error": f"cannot reach {endpoint}: {exc}"}
        if on_done:
            on_done(results[index] or {})

    with (
        httpclient.session(headers=auth_headers(api_key), pool=concurrency) as client,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pizzactl-predict") as pool,
    ):
        list(pool.map(work, range(len(items))))
    if unreachable.is_set() and not any("label" in r for r in results if r):
        raise EndpointError(
            f"Cannot reach the gateway at {endpoint} ({reason[0] if reason else 'connection failed'}).",
            hint="Check it is up with `pizzactl status` (deploy with `pizzactl deploy`), or pass the right --endpoint URL.",
        )
    return [r for r in results if r is not None]


def predict(
    settings,
    sources: Sequence[str],
    concurrency: int = 8,
    csv_path: Path | None = None,
    explain_dir: Path | None = None,
    progress: bool = True,
) -> list[Prediction]:
    """Classify every source; one `Prediction` per image, in order: source, label, probability,
    model_version and probabilities ({class: p}), or source and error."""
    items = expand_sources(sources)
    if not items:
        raise UsageError(
            "No images found in " + ", ".join(sources) + ".",
            hint=f"Pass image files ({', '.join(sorted(IMAGE_SUFFIXES))}), directories of them, or URLs.",
        )
    endpoint = resolve_endpoint(settings)
    if explain_dir is not None:  # fail before classifying if Grad-CAM cannot run here
        check_can_explain(settings)
    if progress and len(items) > 1:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("classifying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("predict", total=len(items))
            results = classify(
                endpoint, items, concurrency, on_done=lambda _r: bar.advance(task), api_key=settings.api_key
            )
    else:
        results = classify(endpoint, items, concurrency, api_key=settings.api_key)
    if explain_dir is not None:
        explain_sources(settings, items, results, Path(explain_dir), endpoint=endpoint)
    if csv_path is not None:
        write_csv(results, Path(csv_path))
    return [Prediction.of(r) for r in results]


def write_csv(results: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One row per image; `probabilities` become one `P(<class>)` column per class, in the model's order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["source", "label", "probability", "model_version", "error"]
    classes = list(dict.fromkeys(c for r in results for c in r.get("probabilities") or {}))
    extra = sorted({k for r in results for k in r} - set(fields) - {"probabilities"})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields + [f"P({c})" for c in classes] + extra)
        writer.writeheader()
        for r in results:
            row = {k: v for k, v in r.items() if k != "probabilities"}
            row.update({f"P({c})": p for c, p in (r.get("probabilities") or {}).items()})
            writer.writerow(row)


TOP_CLASSES = 3


def label_probability(result: Mapping[str, Any]) -> float:
    """P(label): the model's `probability` is that already, except for a binary model's negative
    class (it is P(positive) there), which `probabilities` has."""
    return float((result.get("probabilities") or {}).get(result["label"], result["probability"]))


def top_classes(probabilities: dict[str, float], n: int = TOP_CLASSES) -> str:
    """The most probable classes, e.g. "pizza 0.93 · not_pizza 0.07" (and how many more)."""
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])
    text = " · ".join(f"{name} {p:.2f}" for name, p in ranked[:n])
    return text + (f" · {len(ranked) - n} more" if len(ranked) > n else "")
