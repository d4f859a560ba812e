"""Runs the real gRPC service and the real aiohttp gateway on free local ports, in a
background event loop, so tests can use blocking clients (the official `ollama` client,
grpcio stubs, raw HTTP) against them."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gengate.v1 import generate_pb2_grpc as pb_grpc
from service import server as service_server
from service.engines.base import Engine
from service.settings import ServiceSettings


class Stack:
    def __init__(self, models: Path, engine: Engine | None = None, gateway: dict | None = None, **settings: Any):
        self.settings = ServiceSettings(grpc_addr="127.0.0.1:0", models=models, default_model="", **settings)
        self.gateway_settings = gateway or {}
        self.engine = engine
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="stack")

    def start(self) -> Stack:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        self.service = service_server.build(self.settings, self.engine)
        await self.service.server.start()
        await self.service.set_serving(True)
        self.grpc_target = f"127.0.0.1:{self.service.port}"
        gateway = GatewaySettings(**{"service_addr": self.grpc_target, **self.gateway_settings})
        self._runner = web.AppRunner(create_app(gateway))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.http_port}"

    def run(self, coro: Coroutine, timeout: float = 120) -> Any:
        """Runs a coroutine on the stack's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stub(self) -> pb_grpc.GenerateServiceStub:
        return pb_grpc.GenerateServiceStub(grpc.insecure_channel(self.grpc_target))

    def stop(self) -> None:
        async def _stop() -> None:
            await self._runner.cleanup()
            await self.service.server.stop(None)
            await self.service.close()
        self.run(_stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
