"""Which versions the model server loads side by side, and what their labels point to.

TF Serving's answer, kept here so the builtin server and `tensorflow/serving` read the same
file: a model config text proto (`--model_config_file`, https://www.tensorflow.org/tfx/serving/serving_config
"Serving a Specific Version of a Model" and "Assigning String Labels to Model Versions";
the messages are `ModelConfig`, `FileSystemStoragePathSourceConfig.ServableVersionPolicy` and
`version_labels` in tensorflow_serving/config/model_server_config.proto):

    model_config_list {
      config {
        name: "pizza"
        base_path: "/models/pizza"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

The policy is `latest { num_versions: N }` (TF Serving's default, N = 1), `specific { versions: ... }`
or `all {}`. Only the `config` entry whose `name` is the served model counts; `base_path` and
`model_platform` are read by TF Serving, not here (pizzactl's models folder says where). As in
TF Serving, a label may only name a version that is loaded: a label pointing elsewhere answers
404 until that version is available.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pizzactl.errors import PizzaError

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([{}:])|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|([^\s{}:#"\']+))')


class ModelConfigError(PizzaError):
    """The model config file cannot be read or says something this server cannot do."""

    code = "bad_model_config"
    http_status = 400


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's `ServableVersionPolicy` and `version_labels` for one model."""

    kind: str = "latest"  # latest | specific | all
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions to serve among those on disk that can load, highest first."""
        ordered = sorted(set(available), reverse=True)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[: self.num_versions]

    def describe(self) -> str:
        if self.kind == "specific":
            return "versions " + ", ".join(map(str, sorted(self.versions)))
        if self.kind == "all":
            return "all versions"
        return f"latest {self.num_versions}"


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ModelConfigError(
                f"Cannot read the model config near {text[pos : pos + 30]!r}.",
                hint="Write it as TF Serving's text proto (docs/serve.md, 'Several versions at once').",
            )
        pos = match.end()
        if match.group(1) is None:
            out.append(next(g for g in match.groups()[1:] if g is not None))
    return out


def _parse(tokens: list[str], pos: int = 0, closing: bool = False) -> tuple[list[tuple[str, Any]], int]:
    """Text proto -> [(field, value or nested list)] (repeated fields stay in order)."""
    fields: list[tuple[str, Any]] = []
    while pos < len(tokens):
        name = tokens[pos]
        if name == "}":
            if not closing:
                raise ModelConfigError("Unbalanced '}' in the model config.", hint="Check the braces.")
            return fields, pos + 1
        pos += 1
        if pos < len(tokens) and tokens[pos] == ":":
            pos += 1
        if pos >= len(tokens):
            raise ModelConfigError(f"The model config ends after {name!r}.", hint="Check the braces.")
        if tokens[pos] == "{":
            nested, pos = _parse(tokens, pos + 1, closing=True)
            fields.append((name, nested))
        else:
            value = tokens[pos]
            fields.append((name, value[1:-1] if value[:1] in "\"'" else value))
            pos += 1
    if closing:
        raise ModelConfigError("The model config misses a '}'.", hint="Check the braces.")
    return fields, pos


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ModelConfigError(f"{what} must be an integer, not {value!r}.", hint="Fix the model config.") from None


def policy_from_text(text: str, model_name: str) -> VersionPolicy:
    """The policy and labels of `model_name` in a TF Serving model config (text proto)."""
    top, _ = _parse(_tokens(text))
    configs = [value for name, body in top if name == "model_config_list" for key, value in body if key == "config"]
    for config in configs:
        if dict((k, v) for k, v in config if not isinstance(v, list)).get("name") != model_name:
            continue
        kind, num, versions = "latest", 1, tuple[int, ...]()
        for key, value in config:
            if key == "model_version_policy":
                if not value:
                    continue
                kind, body = value[0]
                if kind == "latest":
                    num = _int(dict(body).get("num_versions", 1), "latest.num_versions")
                elif kind == "specific":
                    versions = tuple(_int(v, "specific.versions") for k, v in body if k == "versions")
                elif kind != "all":
                    raise ModelConfigError(
                        f"Unknown model_version_policy {kind!r}.", hint="Use latest, specific or all (TF Serving's)."
                    )
        labels = {}
        for key, value in config:
            if key == "version_labels":
                pair = dict(value)
                labels[str(pair.get("key"))] = _int(pair.get("value"), f"version_labels {pair.get('key')!r}")
        if kind == "specific" and not versions:
            raise ModelConfigError("specific {} lists no versions.", hint="Add `versions: N` lines.")
        if num < 1:
            raise ModelConfigError("latest.num_versions must be at least 1.", hint="Fix the model config.")
        return VersionPolicy(kind, num, versions, MappingProxyType(labels))
    raise ModelConfigError(
        f"The model config has no `config {{ name: {model_name!r} ... }}`.",
        hint=f"Name the model {model_name!r} in model_config_list (or set PIZZACTL_MODEL_NAME).",
    )


def load_policy(path: Path | str | None, model_name: str) -> VersionPolicy:
    """The policy from `--model-config-file`, or TF Serving's default (latest 1, no labels) without one."""
    if not path:
        return VersionPolicy()
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ModelConfigError(
            f"Cannot read the model config {path}: {exc.strerror or exc}.", hint="Pass an existing file."
        ) from None
    return policy_from_text(text, model_name)


def model_config_text(model_name: str, base_path: str, versions: Iterable[int], labels: dict[str, int]) -> str:
    """A TF Serving model config that serves `versions` with `labels` (the inverse of policy_from_text);
    no versions: TF Serving's default policy, the latest one."""
    versions = sorted(versions)
    policy = (
        "specific { " + " ".join(f"versions: {v}" for v in versions) + " }"
        if versions
        else "latest { num_versions: 1 }"
    )
    lines = [
        "model_config_list {",
        "  config {",
        f'    name: "{model_name}"',
        f'    base_path: "{base_path}"',
        '    model_platform: "tensorflow"',
        "    model_version_policy { " + policy + " }",
    ]
    lines += [f'    version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items()]
    lines += ["  }", "}", ""]
    return "\n".join(lines)
