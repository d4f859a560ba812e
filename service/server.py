"""Builds and runs the grpc.aio server."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal

import grpc

from gengate.v1 import generate_pb2_grpc as pb_grpc
from service import golang, names
from service.engine import Engine
from service.generation import Generation
from service.pool import ModelPool
from service.servicer import GenerateServicer
from service.settings import ServiceSettings
from service.store import ModelStore

log = logging.getLogger(__name__)


def keep_alive_ns(text: str) -> int:
    """GENGATE_KEEP_ALIVE: a Go duration or an integer number of seconds."""
    try:
        return int(text) * 1_000_000_000
    except ValueError:
        return golang.parse_duration(text)


@dataclasses.dataclass
class Service:
    """A built (not yet started) service."""

    server: grpc.aio.Server
    port: int
    pool: ModelPool
    generation: Generation
    store: ModelStore


def build(settings: ServiceSettings, engine: Engine | None = None) -> Service:
    if engine is None:
        from service.llama_engine import LlamaEngine
        engine = LlamaEngine()
    store = ModelStore(settings.models)
    pool = ModelPool(engine, keep_alive_ns(settings.keep_alive))
    generation = Generation(settings, store, pool)
    server = grpc.aio.server()
    pb_grpc.add_GenerateServiceServicer_to_server(GenerateServicer(generation), server)
    port = server.add_insecure_port(settings.grpc_addr)
    return Service(server, port, pool, generation, store)


async def warm_up(service: Service, settings: ServiceSettings) -> None:
    """Loads the default model so the first request does not wait for it."""
    if not settings.default_model:
        return
    entry = service.store.get(names.parse(settings.default_model))
    if entry is None:
        log.warning("default model %s is not installed", settings.default_model)
        return
    from service import request as checks
    from gengate.v1 import generate_pb2 as pb
    model = service.generation.lookup(settings.default_model)
    options = checks.load_options(pb.GenerateRequest(), entry.parameters, default_ctx=settings.context_length,
                                  n_ctx_train=model.n_ctx_train, default_threads=settings.num_threads)
    await service.pool.ensure(entry, options)
    log.info("default model %s loaded", settings.default_model)


async def serve(settings: ServiceSettings) -> None:
    service = build(settings)
    await service.server.start()
    log.info("gRPC listening on %s", settings.grpc_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    warm = asyncio.create_task(warm_up(service, settings))
    await stop.wait()
    log.info("shutting down")
    warm.cancel()
    await service.server.stop(grace=5)
    await service.pool.close()
