"""python -m gateway: runs the HTTP gateway."""
import logging

import prometheus_client
from aiohttp import web

from gateway.app import METRICS, create_app
from gateway.settings import GatewaySettings
from service import logs
from service.settings import load


def main() -> None:
    settings = load(GatewaySettings)
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    if settings.metrics_addr:
        host, _, port = settings.metrics_addr.rpartition(":")
        prometheus_client.start_http_server(int(port), addr=host.strip("[]"), registry=app[METRICS].registry)
    host, _, port = settings.http_addr.rpartition(":")
    web.run_app(app, host=host.strip("[]") or None, port=int(port), shutdown_timeout=settings.drain_seconds,
                print=lambda *_: logging.getLogger("gateway").info("HTTP listening on %s", settings.http_addr))


if __name__ == "__main__":
    main()
