"""Typed results: what the library's verbs return, and the JSON `--json` prints from them.

A result is a frozen dataclass, so a notebook or a type checker reads attributes
(`result.url`, `metrics.accuracy`). `as_dict()` is the JSON shape scripts have relied on since
before the results were typed; `to_json()` is that plus `"schema": SCHEMA`, the version of the
shape: it goes up only when a key is removed or changes meaning (a new key does not bump it).
A result also reads as a read-only mapping of `as_dict()` (`result["url"]`, `"error" in r`), so
code written against the old dicts keeps working while it moves to attributes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

SCHEMA = 1


class Result(Mapping[str, Any]):
    """Base of the typed results: subclasses are `@dataclass(frozen=True, eq=False)` and
    implement `as_dict`; equality is that of the JSON shape, so a result equals the dict it
    replaced (eq=False keeps the dataclass from replacing this `__eq__`)."""

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The `--json` document: `{"schema": SCHEMA, **as_dict()}`."""
        return {"schema": SCHEMA, **self.as_dict()}

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Result):
            return type(self) is type(other) and self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable contents (dicts) and equal to dicts


def jsonable(value: Any) -> Any:
    """`json.dumps`'s `default`: a typed result as its JSON document, anything else as text."""
    if isinstance(value, Result):
        return value.to_json()
    return str(value)
