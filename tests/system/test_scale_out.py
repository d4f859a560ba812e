"""One gateway over two service replicas: round-robin, and a replica going away."""
from __future__ import annotations

import contextlib
import json

import httpx
from aiohttp import web

from gateway.app import create_app
from gateway.settings import GatewaySettings
from service import server as service_server
from service.settings import ServiceSettings
from tests.fake_engine import FakeEngine, Script


@contextlib.asynccontextmanager
async def replicas(models, engines):
    """One service per engine, all behind one gateway; yields the gateway's /api/generate URL and the services."""
    services = [service_server.build(ServiceSettings(grpc_addr="127.0.0.1:0", models=models, default_model=""), e)
                for e in engines]
    for s in services:
        await s.server.start()
        await s.set_serving(True)
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in services)
    runner = web.AppRunner(create_app(GatewaySettings(service_addr=target)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/api/generate", services
    finally:
        await runner.cleanup()
        for s in services:
            await s.server.stop(None)
            await s.close()


async def test_gateway_balances_over_replicas_and_survives_one_leaving(models):
    engines = [FakeEngine(), FakeEngine()]
    body = {"model": "tiny", "prompt": "hi", "stream": False}
    async with replicas(models, engines) as (url, services), httpx.AsyncClient(timeout=30) as client:
        for _ in range(10):
            assert (await client.post(url, json=body)).status_code == 200
        assert engines[0].started + engines[1].started == 10
        assert engines[0].started >= 3 and engines[1].started >= 3        # both replicas serve
        await services[0].server.stop(None)
        before = engines[1].started
        for _ in range(6):
            assert (await client.post(url, json=body)).status_code == 200
        assert engines[1].started == before + 6


async def test_a_replica_dying_mid_stream_ends_it_with_an_error_line_never_a_replay(models):
    """Reliability #29: gRPC retries only before the first reply, so a broken stream is never replayed on the
    other replica (no duplicated tokens); the next request goes to the one still up."""
    engines = [FakeEngine(), FakeEngine()]
    for e in engines:
        e.script = Script(count=200, delay=0.01)
    async with replicas(models, engines) as (url, services), httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", url, json={"model": "tiny", "prompt": "hi"}) as resp:
            lines = resp.aiter_lines()
            first = json.loads(await anext(lines))
            serving = next(i for i, e in enumerate(engines) if e.active)
            await services[serving].server.stop(None)                     # that replica goes away mid-stream
            rest = [json.loads(line) async for line in lines if line]
        texts = [first["response"]] + [x["response"] for x in rest if "response" in x]
        assert "error" in rest[-1] and not any(x.get("done") for x in rest)
        assert texts == [f"t{i} " for i in range(len(texts))]            # in order, none twice
        assert engines[1 - serving].started == 0                          # never replayed on the other
        body = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
        assert (await client.post(url, json=body)).status_code == 200
        assert engines[1 - serving].started == 1
