"""gRPC health transitions and reflection, on a real server with a fake engine."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service import server as service_server
from service.settings import ServiceSettings
from tests.fake_engine import FakeEngine

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_is_not_serving_until_the_default_model_loads_and_after_shutdown_starts(models):
    engine = FakeEngine()
    engine.load_gate = asyncio.Event()
    settings = ServiceSettings(grpc_addr="127.0.0.1:0", models=models, default_model="tiny")
    service = service_server.build(settings, engine)
    await service.set_serving(False)
    await service.server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        def check(name=""):
            return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        warm = asyncio.create_task(service_server.warm_up(service, settings))
        await asyncio.sleep(0.05)
        assert (await check()).status == NOT_SERVING
        assert (await check(service_server.SERVICE_NAME)).status == NOT_SERVING
        engine.load_gate.set()
        await warm
        assert (await check()).status == SERVING and (await check(service_server.SERVICE_NAME)).status == SERVING
        try:
            await check("no.such.Service")
            raise AssertionError("unknown service answered")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
        await service.health.enter_graceful_shutdown()
        assert (await check()).status == NOT_SERVING
    await service.server.stop(None)
    await service.close()


def test_reflection_lists_and_describes_the_service(fake):
    db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(fake.grpc_target))
    services = set(db.get_services())
    assert {"gengate.v1.GenerateService", "grpc.health.v1.Health"} <= services
    method = db.FindFileContainingSymbol("gengate.v1.GenerateService").service[0].method[0]
    assert (method.name, method.server_streaming) == ("Generate", True)


async def test_reflection_can_be_turned_off(models):
    service = service_server.build(ServiceSettings(grpc_addr="127.0.0.1:0", models=models, default_model="",
                                                   reflection=False), FakeEngine())
    await service.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in replies:
                    pass
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await service.server.stop(None)
        await service.close()


def test_gateway_readiness_follows_service_health(fake):
    import httpx
    assert httpx.get(fake.url + "/readyz").json() == {"status": "ready"}
    fake.run(fake.service.set_serving(False))
    try:
        resp = httpx.get(fake.url + "/readyz")
        assert (resp.status_code, resp.json()) == (503, {"error": "service not ready: NOT_SERVING"})
    finally:
        fake.run(fake.service.set_serving(True))


async def test_a_missing_default_model_keeps_health_not_serving(models, caplog):
    settings = ServiceSettings(grpc_addr="127.0.0.1:0", models=models, default_model="missing:1b")
    service = service_server.build(settings, FakeEngine())
    await service.set_serving(False)
    await service.server.start()
    await service_server.warm_up(service, settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == NOT_SERVING
    assert any("model 'missing:1b' not found; health stays NOT_SERVING" in r.getMessage() for r in caplog.records)
    await service.server.stop(None)


def test_reflection_also_answers_as_v1(fake):
    """Tools try grpc.reflection.v1 first (v1alpha is deprecated); both answer."""
    from grpc_reflection.v1alpha import reflection_pb2 as messages

    channel = grpc.insecure_channel(fake.grpc_target)
    for version in ("v1", "v1alpha"):
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=messages.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=messages.ServerReflectionResponse.FromString)
        (reply,) = list(call(iter([messages.ServerReflectionRequest(list_services="")]), timeout=10))
        listed = {s.name for s in reply.list_services_response.service}
        assert {"gengate.v1.GenerateService", "gengate.v1.ModelService", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= listed, version
