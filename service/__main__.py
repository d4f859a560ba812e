"""python -m service: runs the gRPC service."""
import asyncio

from common import logs
from common.settings import load
from service.server import serve
from service.settings import ServiceSettings


def main() -> None:
    settings = load(ServiceSettings)
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
