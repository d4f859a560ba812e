"""The gateway's HTTP server: listens (sharing the address with other workers when it is one), and on SIGTERM (or
SIGINT) drains: the listener stays open and new API requests get 503 with Retry-After (and `Connection: close`),
so a client or a mesh sidecar retries elsewhere instead of meeting a refused connection; requests in flight have
GENGATE_DRAIN_SECONDS to finish (the streams still running then end with an error line); then the listener
closes.
"""
from __future__ import annotations

import asyncio
import logging
import signal

import prometheus_client
from aiohttp import web

from common import tracing
from gateway.app import create_app, start_drain
from gateway.settings import GatewaySettings
from gateway.state import DRAIN, METRICS

log = logging.getLogger("gateway")


async def serve(settings: GatewaySettings, worker: bool = False) -> None:
    """Serves until SIGTERM or SIGINT, then drains. A `worker` (gateway.workers) shares the address with the
    others (SO_REUSEPORT), and its supervisor serves the metrics."""
    tracing.setup("gengate-gateway", settings.otlp_endpoint)
    app = create_app(settings)
    if settings.metrics_addr and not worker:
        host, _, port = settings.metrics_addr.rpartition(":")
        prometheus_client.start_http_server(int(port), addr=host.strip("[]"), registry=app[METRICS].registry)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)  # ours: gateway.access
    await runner.setup()
    host, _, port = settings.http_addr.rpartition(":")
    await web.TCPSite(runner, host.strip("[]") or None, int(port), reuse_port=worker or None).start()
    log.info("HTTP listening on %s", settings.http_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await start_drain(app)
    deadline = loop.time() + settings.drain_seconds
    # The drain ends the RPCs still running a second before the deadline; their handlers then finish.
    while app[DRAIN].active and loop.time() < deadline:
        await asyncio.sleep(0.05)
    log.info("drained; stopping")
    await runner.cleanup()
    tracing.shutdown()
