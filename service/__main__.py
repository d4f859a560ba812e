"""python -m service: runs the gRPC service."""
import asyncio
import logging

from service.server import serve
from service.settings import ServiceSettings, load


def main() -> None:
    settings = load(ServiceSettings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
