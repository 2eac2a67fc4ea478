"""pizzactl.json, a version's `assets.extra/pizzactl.json`, as a typed, frozen `ModelCard`.

Every reader (the model server, evaluate, explain, up, deploy, bench) gets the same fields with
the same defaults instead of a raw dict. The file format does not change: a card writes exactly
the keys it was read or built with (a key an older card lacks is not added, a key this version
does not know is kept in `extra`), so older and newer cards load and round-trip, and the model
server's /metadata still answers the file's content. Cards written by other tools (the tests'
fakes, TF Serving exports with only `classes`) hold any subset of the fields.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pizzactl.errors import ModelNotFoundError
from pizzactl.model.store import METADATA_DIR, METADATA_FILE, NO_MODEL_HINT


def card_path(version_dir: Path | str) -> Path:
    """Where a version's card lives: `<version>/assets.extra/pizzactl.json` (TF Serving ignores assets.extra)."""
    return Path(version_dir) / METADATA_DIR / METADATA_FILE


@dataclass(frozen=True)
class ModelCard:
    """What pizzactl knows about an exported version. Nested values (metrics, signatures,
    runtimes) are the file's JSON objects as they are."""

    name: str | None = None
    image_size: int | None = None
    classes: tuple[str, ...] = ()  # the model's output order
    positive_class: str | None = None  # classes[1] for two classes, else None
    threshold: float | None = None  # P(positive_class) at or above it is labelled positive (two classes)
    backbone: str | None = None
    weights: str | None = None
    metrics: Mapping[str, Any] | None = None
    data_hash: str | None = None
    run_id: str | None = None
    tta: Any = None
    pizzactl_version: str | None = None
    tensorflow_version: str | None = None
    keras_version: str | None = None
    created: str | None = None
    signatures: Mapping[str, Any] | None = None  # pizzactl.model.contract.signature_info
    self_check: Mapping[str, Any] | None = None  # what export's self-check compared
    runtimes: Mapping[str, Mapping[str, Any]] | None = None  # LiteRT artefacts: pizzactl.model.litert
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they are
    present: frozenset[str] = field(default=frozenset(), repr=False, compare=False)  # known keys the file has

    @classmethod
    def known_keys(cls) -> tuple[str, ...]:
        """The known keys of pizzactl.json."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "present"))

    @classmethod
    def build(cls, **values: Any) -> ModelCard:
        """A new card holding exactly the keys given (unknown ones go to `extra`)."""
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        known = set(cls.known_keys())
        values = {k: v for k, v in data.items() if k in known}
        if values.get("classes") is not None:
            values["classes"] = tuple(str(c) for c in values["classes"])
        else:
            values.pop("classes", None)
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra, present=frozenset(k for k in data if k in known))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, with the keys the card was read or built with (plus any field set since)."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "present"):
                continue
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name in self.present or value != default:
                out[f.name] = list(value) if f.name == "classes" else value
        return out

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with some fields changed; they are written even if the card lacked them."""
        return dataclasses.replace(self, **changes, present=self.present | changes.keys())

    def runtime(self, name: str) -> Mapping[str, Any]:
        """The `runtimes` entry of one LiteRT artefact ({} if export did not record it)."""
        return (self.runtimes or {}).get(name) or {}

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @classmethod
    def load(cls, version_dir: Path | str) -> ModelCard:
        """The card of an exported version; ModelNotFoundError if it has none or it is not JSON."""
        path = card_path(version_dir)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelNotFoundError(
                f"{version_dir} has no {METADATA_DIR}/{METADATA_FILE}; it was not exported by pizzactl.",
                hint=f"Export it with `pizzactl export RUN`, or {NO_MODEL_HINT}.",
            ) from None
        except json.JSONDecodeError as exc:
            raise ModelNotFoundError(
                f"{path} is not valid JSON ({exc}).",
                hint="Export the model again with `pizzactl export RUN`.",
            ) from None
        if not isinstance(data, dict):
            raise ModelNotFoundError(
                f"{path} is not a JSON object.", hint="Export the model again with `pizzactl export RUN`."
            )
        return cls.from_dict(data)

    @classmethod
    def read(cls, version_dir: Path | str) -> ModelCard | None:
        """The card, or None when there is none to read (a SavedModel exported elsewhere)."""
        try:
            return cls.load(version_dir)
        except (ModelNotFoundError, OSError, ValueError):  # unreadable counts as none, as it always did
            return None

    def save(self, version_dir: Path | str) -> Path:
        """Write the card into a version being exported (sorted keys, two-space indent, as always)."""
        path = card_path(version_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=_json_default) + "\n")
        return path


def _json_default(value):
    """numpy scalars and arrays (metrics often are) as numbers and lists; anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
