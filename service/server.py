"""The service's composition root: builds the grpc.aio server from the settings (store, pool, engine, the
pipelines, the servicers) and runs it, with its drain on SIGTERM."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from common import logs, requests, tracing
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc
from service.api.auth import BearerToken
from service.api.generate import GenerateServicer
from service.api.models import ModelServicer
from service.api.observe import Observe
from service.chat.jinja import ChatTemplates
from service.engines import diffusion, llama, vision
from service.engines.base import Engine, ImageEngine, ImageRunner
from service.engines.batch import BatchEngine
from service.engines.pool import ModelPool
from service.errors import GenerateError
from service.generation.admission import Admission
from service.generation.grammar import Grammars
from service.generation.models import Models
from service.generation.pipeline import Generation
from service.metrics import Metrics
from service.models.creation import Probes
from service.models.jobs import ModelJobs
from service.models.store import ModelStore
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerateService"].full_name
MODEL_SERVICE_NAME = mpb.DESCRIPTOR.services_by_name["ModelService"].full_name


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Server reflection as grpc.reflection.v1 and v1alpha (grpcio-reflection ships v1alpha only; the two protos
    are the same messages, so v1 is the same servicer under the newer name). Tools try v1 first."""
    names = names + (reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))


@dataclasses.dataclass
class Service:
    """A built (not yet started) service."""

    server: grpc.aio.Server
    port: int
    models: Models
    generation: Generation
    health: health.aio.HealthServicer
    metrics: Metrics

    @property
    def pool(self) -> ModelPool:
        return self.models.pool

    @property
    def store(self) -> ModelStore:
        return self.models.store

    async def close(self) -> None:
        """Unloads the models and stops the worker processes (after the server stopped)."""
        await self.pool.close()
        await self.generation.grammars.close()
        await self.generation.chat_templates.close()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


def build(settings: ServiceSettings, engine: Engine | None = None, image_engine: ImageEngine | None = None) -> Service:
    logs.tag_records()
    if engine is None:
        engine = BatchEngine(settings.num_parallel, invariant=settings.batch_invariant, repack=settings.cpu_repack)
    store = ModelStore(settings.models)
    store.heal()
    keep_alive = requests.keep_alive_ns(settings.keep_alive, whole_seconds=True)
    assert keep_alive is not None
    pool = ModelPool(engine, keep_alive, settings.max_loaded_models, settings.load_timeout,
                     image_engine=image_engine or diffusion.DiffusionEngine(
                         settings.max_message_bytes, settings.load_timeout if settings.load_timeout > 0 else None))
    metrics = Metrics()
    metrics.loaded.set_function(lambda: len(pool.loaded()))
    name = "batch" if isinstance(engine, BatchEngine) else type(engine).__name__
    repack = engine.repack if isinstance(engine, BatchEngine) else None
    metrics.engine.info({"engine": name, "layout": engine.layout or "none",
                         "cpu_repack": "none" if repack is None else "on" if repack else "off"})
    if engine.stats is not None:
        metrics.count_decoding(engine.stats)
    log.info("engine: %s, layout %s; CPU weight repacking %s", name, engine.layout or "none",
             "n/a" if not isinstance(engine, BatchEngine) else f"{'on' if repack else 'off'}: {engine.repack_reason}")
    if isinstance(engine, BatchEngine):
        found = llama.devices()
        log.info("compute devices: %s", "; ".join(f"{kind} {what}" for kind, what in found) or "none found")
        unused = llama.gpu_backends_unused()
        if unused and not any(kind in ("GPU", "iGPU") for kind, _ in found):
            log.warning("this build carries GPU backends (%s) but no GPU is usable here (no driver or no device): "
                        "models run on the CPU", ", ".join(unused))

    def kv_usage() -> float:
        cells = [m.runner.kv_cells() for m in pool.loaded()]
        total = sum(c for _, c in cells)
        return sum(u for u, _ in cells) / total if total else 0.0
    metrics.kv_usage.set_function(kv_usage)
    probes = Probes(projector=vision.problem, text=llama.problem, diffusion=diffusion.problem)
    models = Models(settings, store, pool, ModelJobs(settings.model_jobs, settings.max_model_jobs_queue), probes)
    metrics.image_worker_memory.set_function(
        lambda: sum(getattr(m.runner, "memory_bytes", 0) for m in pool.loaded() if isinstance(m.runner, ImageRunner)))
    generation = Generation(settings, models, Admission(settings.num_parallel, settings.max_queue, metrics),
                            metrics, Grammars(), ChatTemplates(size=settings.num_parallel))
    limits = [("grpc.max_receive_message_length", settings.max_message_bytes),
              ("grpc.max_send_message_length", settings.max_message_bytes),
              # Accept the gateway's keepalive pings (every 60 s) during a call that sends nothing for minutes (a long
              # stream:false generation) without a too_many_pings GOAWAY: gRPC's default allows one per 5 minutes.
              ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
              # Recycle connections every 5 min (streams in flight get 30 min more), so clients
              # balancing over DNS notice replicas added by a scale-up.
              ("grpc.max_connection_age_ms", 300_000), ("grpc.max_connection_age_grace_ms", 1_800_000),
              # A busy port is an error, not a second server sharing it.
              ("grpc.so_reuseport", 0)]
    observe = Observe({SERVICE_NAME: "an error was encountered while running the model",
                       MODEL_SERVICE_NAME: "internal error"}, metrics)
    interceptors = [*tracing.server_interceptors(), observe]
    if settings.api_key:
        interceptors.append(BearerToken(settings.api_key))
    server = grpc.aio.server(options=limits, interceptors=interceptors)
    pb_grpc.add_GenerateServiceServicer_to_server(GenerateServicer(generation), server)
    mpb_grpc.add_ModelServiceServicer_to_server(ModelServicer(models), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        enable_reflection((SERVICE_NAME, MODEL_SERVICE_NAME, health_name), server)
    if settings.tls_cert:
        credentials = grpc.ssl_server_credentials(
            [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
            root_certificates=Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None,
            require_client_auth=bool(settings.tls_client_ca))
        port = server.add_secure_port(settings.grpc_addr, credentials)
    else:
        port = server.add_insecure_port(settings.grpc_addr)
    return Service(server, port, models, generation, health_servicer, metrics)


async def warm_up(service: Service, settings: ServiceSettings) -> None:
    """Loads the default model, then reports SERVING (NOT_SERVING until then, or for good if it fails)."""
    if not settings.default_model:
        await service.set_serving(True)
        return
    try:
        await service.models.ensure(settings.default_model)
    except GenerateError as exc:
        log.error("default model %s: %s; health stays NOT_SERVING", settings.default_model, exc.message)
        return
    except Exception:
        log.exception("default model %s failed to load: health stays NOT_SERVING", settings.default_model)
        return
    await service.set_serving(True)
    log.info("default model %s loaded: SERVING", settings.default_model)


EXIT_GRACE_SECONDS = 5.0


def _exit(message: str, *args: object) -> None:
    stuck = [t.name for t in threading.enumerate() if t is not threading.current_thread()
             and t is not threading.main_thread()]
    log.error(message + "; abandoning threads: %s", *args, ", ".join(stuck) or "none")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


def _exit_now(sig: signal.Signals) -> None:
    _exit("%s again while draining: exiting now", sig.name)


def exit_after(seconds: float) -> threading.Timer:
    """Ends the process `seconds` from now if it has not ended by then (exit status 1, with a log line naming what
    was left running)."""
    timer = threading.Timer(seconds, _exit, ("still running %gs after SIGTERM: exiting", seconds))
    timer.daemon = True
    timer.start()
    return timer


async def serve(settings: ServiceSettings, engine: Engine | None = None) -> None:
    tracing.setup("gengate-service", settings.otlp_endpoint)
    service = build(settings, engine)
    await service.set_serving(False)
    await service.server.start()
    log.info("gRPC listening on %s", settings.grpc_addr)
    if settings.metrics_addr:
        service.metrics.serve(settings.metrics_addr)
        log.info("metrics on http://%s/metrics", settings.metrics_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    warm = asyncio.create_task(warm_up(service, settings))
    await stop.wait()
    # Drain: NOT_SERVING at once, new RPCs refused (UNAVAILABLE), in-flight ones get
    # drain_seconds to finish and are then cancelled; decoding ends before the process does. Whatever cannot be
    # stopped (a thread stuck in C code) is abandoned EXIT_GRACE_SECONDS later; a second signal exits at once.
    log.info("SIGTERM: draining for up to %ss", settings.drain_seconds)
    exit_after(settings.drain_seconds + EXIT_GRACE_SECONDS)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _exit_now, sig)
    await service.health.enter_graceful_shutdown()
    warm.cancel()
    await service.server.stop(grace=settings.drain_seconds)
    await service.close()
    tracing.shutdown()
    log.info("stopped")
