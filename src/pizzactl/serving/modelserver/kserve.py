"""KServe's v1 health beside TF Serving's REST API, so KServe's v1 client reads what it expects.

KServe's `InferenceRESTClient` (protocol "v1", kserve/inference_client.py) asks `GET /` for
`{"status": "alive"}` (`is_server_live`) and `GET /v1/models/<name>` for `{"name", "ready"}`
(`is_model_ready`). TF Serving's clients (and the gateway) read `model_version_status` from the
same status answer, so one body carries both.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def v1_status(name: str, status: dict[str, Any]) -> dict[str, Any]:
    """TF Serving's status answer plus KServe's `name` and `ready` (some version AVAILABLE)."""
    ready = any(entry.get("state") == "AVAILABLE" for entry in status.get("model_version_status", []))
    return {"name": name, "ready": ready, **status}


async def live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


def v1_routes() -> list[Route]:
    return [Route("/", live, methods=["GET"])]
