"""python -m gateway: runs the HTTP gateway (gateway.server), or with GENGATE_GATEWAY_WORKERS > 1 that many
processes on one address under a supervisor (gateway.workers); on SIGTERM it drains, then exits.
"""
from __future__ import annotations

import asyncio
import sys

from common import logs
from common.settings import load
from gateway.server import serve
from gateway.settings import GatewaySettings
from gateway.workers import supervise


def main() -> None:
    settings = load(GatewaySettings)
    logs.configure(settings.log_level, settings.log_format)
    if settings.workers > 1:
        sys.exit(supervise(settings))
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
