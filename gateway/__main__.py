"""python -m gateway: runs the HTTP gateway."""
import logging

from aiohttp import web

from gateway.app import create_app
from gateway.settings import GatewaySettings
from service.settings import load


def main() -> None:
    settings = load(GatewaySettings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = settings.http_addr.rpartition(":")
    web.run_app(create_app(settings), host=host.strip("[]") or None, port=int(port), shutdown_timeout=settings.drain_seconds,
                print=lambda *_: logging.getLogger("gateway").info("HTTP listening on %s", settings.http_addr))


if __name__ == "__main__":
    main()
