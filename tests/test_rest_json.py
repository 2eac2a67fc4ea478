"""The gateway's predict request body, built without json.dumps, is the JSON json.dumps writes."""

from __future__ import annotations

import base64
import json

import pytest

from pizzactl.serving.modelserver.rest import binary_instances, parse_request


@pytest.mark.parametrize("n", [1, 3])
def test_binary_instances_is_byte_for_byte_what_json_dumps_writes(n):
    blobs = [bytes(range(256)) * 7 + bytes([i]) for i in range(n)]  # every byte value, b64 with + and /
    want = json.dumps({"instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in blobs]}).encode()
    assert binary_instances(blobs) == want
    inputs, columnar = parse_request(json.loads(binary_instances(blobs)), ["image_bytes"])
    assert inputs == {"image_bytes": blobs} and not columnar
