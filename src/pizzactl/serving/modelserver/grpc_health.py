"""The standard gRPC health service (`grpc.health.v1.Health`) on the model server's gRPC port.

What Kubernetes' gRPC probes (`grpc: {port: 8500}`), `grpc_health_probe` and load balancers ask:
SERVING once a model version is loaded (the same answer as `/v2/health/ready`), NOT_SERVING
before; for the whole server (service "") and for each gRPC service it serves by name; an
unknown name is NOT_FOUND, as the protocol says (grpc/grpc doc/health-checking.md). The status
is read from the model server when asked, not pushed, so it cannot lag a hot reload; `Watch`
polls it while a watcher is connected.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from pizzactl.serving.modelserver.server import ModelServer

WATCH_POLL_SECONDS = 1.0


class Health(health_aio.HealthServicer):
    def __init__(self, server: ModelServer, services: tuple[str, ...]):
        super().__init__()
        self.server = server
        self.services = ("", *services)

    async def _refresh(self) -> None:
        serving = self.server.model is not None
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self.services:
            if self._server_status.get(service) != status:
                await self.set(service, status)

    async def Check(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._refresh()
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: aio.ServicerContext) -> None:
        async def keep_current() -> None:
            while True:
                await self._refresh()
                await asyncio.sleep(WATCH_POLL_SECONDS)

        refresher = asyncio.create_task(keep_current())
        try:
            await super().Watch(request, context)
        finally:
            refresher.cancel()


def add_to(server: ModelServer, grpc_server: aio.Server, services: tuple[str, ...]) -> None:
    """Serve the health service for `services` (full names, e.g. inference.GRPCInferenceService)."""
    health_pb2_grpc.add_HealthServicer_to_server(Health(server, services), grpc_server)
