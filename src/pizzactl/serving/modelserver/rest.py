"""TF Serving's REST JSON, both ways: the row (`instances`) and columnar (`inputs`) request
forms to input lists, and output arrays to `predictions` / `outputs`.

Binary values are `{"b64": "..."}`; errors are BadInputErrors worded as TF Serving words them
(TF Serving clients show that text), answered as `{"error": "..."}` with a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

from pizzactl.errors import BadInputError

_URLSAFE = re.compile(r"[A-Za-z0-9_\-]*={0,2}")
# A tensor is a few lists deep (a batch of images: 4); this bounds the recursion of everything that
# walks a request (the JSON parser itself, decode_value, v2's flattening) far below Python's limit.
MAX_JSON_DEPTH = 32


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(raw: bytes) -> int:
    """How deep valid JSON nests, from its bytes (strings left out), without parsing it: vectorized,
    so a large pixel tensor costs milliseconds, and no recursion whatever the depth."""
    import numpy as np

    text = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    step = ((text == ord("[")) | (text == ord("{"))).astype(np.int8) - ((text == ord("]")) | (text == ord("}")))
    return int(np.cumsum(step, dtype=np.int64).max(initial=0))


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; a BadInputError (400) when it is not JSON or nested deeper than
    MAX_JSON_DEPTH, instead of a RecursionError (a 500) in the parser or in the code after it."""
    deep = f"JSON Parse error: nested more than {MAX_JSON_DEPTH} levels deep"
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(raw) > MAX_JSON_DEPTH:
        raise BadInputError(deep)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"JSON Parse error: {exc}") from None
    except RecursionError:  # malformed JSON json_depth misjudged
        raise BadInputError(deep) from None


def decode_value(value: Any) -> Any:
    """TF Serving's JSON: {"b64": "..."} is binary; lists are tensors; scalars stay scalars."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            text = value["b64"]
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                if _URLSAFE.fullmatch(text):
                    try:
                        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
                    except (binascii.Error, ValueError):
                        pass
                raise BadInputError("Unable to base64 decode") from None
        raise BadInputError(f"Unexpected object in a tensor value: keys {sorted(value)[:5]}")
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    return value


def binary_instances(blobs: Sequence[bytes]) -> bytes:
    """`{"instances": [{"b64": ...}, ...]}` for binary inputs, as `json.dumps` writes it.

    Built by hand: base64 never needs JSON escaping, and json.dumps scanning each ~40 KB string
    for characters to escape was most of the gateway's JSON cost (~65 of 94 us per image).
    """
    return b'{"instances": [' + b", ".join(b'{"b64": "' + base64.b64encode(b) + b'"}' for b in blobs) + b"]}"


def row_inputs(instances: Any, names: list[str]) -> dict[str, list]:
    if not isinstance(instances, list):
        raise BadInputError("'instances' must be a list")
    if not instances:
        raise BadInputError("'instances' is empty")
    single = len(names) == 1
    named = all(isinstance(i, dict) and set(i) != {"b64"} for i in instances)
    columns: dict[str, list] = {n: [] for n in names}
    for instance in instances:
        if named:
            missing = [n for n in names if n not in instance]
            extra = [k for k in instance if k not in columns]
            if missing or extra:
                raise BadInputError(f"instance has keys {sorted(instance)}; the signature takes {names}")
            for n in names:
                columns[n].append(decode_value(instance[n]))
        elif single:
            columns[names[0]].append(decode_value(instance))
        else:
            raise BadInputError(f"The signature takes several inputs {names}: each instance must be an object")
    return columns


def columnar_inputs(inputs: Any, names: list[str]) -> dict[str, list]:
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        if sorted(inputs) != sorted(names):
            raise BadInputError(f"'inputs' has keys {sorted(inputs)}; the signature takes {names}")
        columns = {n: decode_value(inputs[n]) for n in names}
    elif len(names) == 1:
        columns = {names[0]: decode_value(inputs)}
    else:
        raise BadInputError(f"The signature takes several inputs {names}: 'inputs' must be an object")
    for n, v in columns.items():
        if not isinstance(v, list):
            columns[n] = [v]
        if not columns[n]:
            raise BadInputError(f"input {n!r} is empty")
    return columns


def parse_request(body: dict[str, Any], names: list[str]) -> tuple[dict[str, list], bool]:
    """A predict request body -> (inputs by name, columnar?)."""
    columnar = "inputs" in body
    if columnar == ("instances" in body):
        raise BadInputError(
            "Missing 'inputs' or 'instances' key" if not columnar else "Request has both 'inputs' and 'instances' keys"
        )
    return (columnar_inputs(body["inputs"], names) if columnar else row_inputs(body["instances"], names)), columnar


def jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.floating):
        return float(f"{float(value):.7g}")
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def answer(outputs: dict[str, Any], columnar: bool) -> dict[str, Any]:
    """Output arrays -> `{"outputs": ...}` (columnar request) or `{"predictions": [...]}` (row request).

    As in TF Serving, a signature with one output answers bare values instead of objects.
    """
    keys = sorted(outputs)
    if columnar:
        cols = {k: [jsonable(v) for v in outputs[k]] for k in keys}
        return {"outputs": cols[keys[0]]} if len(keys) == 1 else {"outputs": cols}
    n = len(outputs[keys[0]]) if keys else 0
    if len(keys) == 1:
        return {"predictions": [jsonable(v) for v in outputs[keys[0]]]}
    return {"predictions": [{k: jsonable(outputs[k][i]) for k in keys} for i in range(n)]}
