"""Ollama's API (/api/...): JSON bodies translated by gateway.ollama.wire, streams as NDJSON.

Streams follow Ollama: one JSON object per line (`application/x-ndjson`), or one object with
`"stream": false`; load, unload and debug-render replies are always one object; an error after the
first byte is a last line {"error": ...}.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from aiohttp import web

from common import requests
from gateway import relay
from gateway.dialects import OLLAMA
from gateway.ollama import wire
from gateway.relay import route
from gateway.state import SERVICE, SETTINGS
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb


@route(OLLAMA, wire.generate_request)
async def generate(request: web.Request, req: pb.GenerateRequest) -> web.StreamResponse:
    return await relay.stream(request, request.config_dict[SERVICE].generate.Generate, req,
                              wire.NdjsonFramer(wire.generate_response), OLLAMA, streaming=requests.streams(req))


@route(OLLAMA, wire.chat_request)
async def chat(request: web.Request, req: pb.ChatRequest) -> web.StreamResponse:
    return await relay.stream(request, request.config_dict[SERVICE].generate.Chat, req,
                              wire.NdjsonFramer(wire.chat_response), OLLAMA, streaming=requests.streams(req))


@route(OLLAMA, wire.embed_request)
async def embed(request: web.Request, req: pb.EmbedRequest) -> web.Response:
    return await relay.unary(request, request.config_dict[SERVICE].generate.Embed, req, wire.embed_response,
                             OLLAMA)


@route(OLLAMA, wire.embeddings_request)
async def embeddings(request: web.Request, req: pb.EmbedRequest) -> web.Response:
    return await relay.unary(request, request.config_dict[SERVICE].generate.Embed, req,
                             lambda reply: {"embedding": list(reply.embeddings[0].values) if reply.embeddings else []},
                             OLLAMA)


@route(OLLAMA)
async def tags(request: web.Request) -> web.Response:
    return await relay.unary(request, request.config_dict[SERVICE].models.ListModels, mpb.ListModelsRequest(),
                             wire.tags_response, OLLAMA)


@route(OLLAMA)
async def ps(request: web.Request) -> web.Response:
    return await relay.unary(request, request.config_dict[SERVICE].models.ListRunningModels,
                             mpb.ListRunningModelsRequest(), wire.ps_response, OLLAMA)


@route(OLLAMA)
async def version(request: web.Request) -> web.Response:
    return await relay.unary(request, request.config_dict[SERVICE].models.GetVersion, mpb.GetVersionRequest(),
                             lambda reply: {"version": reply.version, "gengate_version": reply.gengate_version},
                             OLLAMA)


@route(OLLAMA, wire.show_request)
async def show(request: web.Request, req: mpb.ShowModelRequest) -> web.Response:
    return await relay.unary(request, request.config_dict[SERVICE].models.ShowModel, req, wire.show_response,
                             OLLAMA)


@route(OLLAMA, wire.copy_request)
async def copy(request: web.Request, req: mpb.CopyModelRequest) -> web.Response:
    return await relay.unary(request, request.config_dict[SERVICE].models.CopyModel, req, None, OLLAMA)


@route(OLLAMA, wire.delete_request)
async def delete(request: web.Request, req: mpb.DeleteModelRequest) -> web.Response:
    return await relay.unary(request, request.config_dict[SERVICE].models.DeleteModel, req, None, OLLAMA)


@route(OLLAMA, wire.pull_request)
async def pull(request: web.Request, req: mpb.PullModelRequest) -> web.StreamResponse:
    return await relay.stream(request, request.config_dict[SERVICE].models.PullModel, req,
                              wire.NdjsonFramer(wire.progress_response), OLLAMA, streaming=requests.streams(req))


@route(OLLAMA, wire.push_request)
async def push(request: web.Request, req: mpb.PushModelRequest) -> web.StreamResponse:
    return await relay.stream(request, request.config_dict[SERVICE].models.PushModel, req,
                              wire.NdjsonFramer(wire.progress_response), OLLAMA, streaming=requests.streams(req))


@route(OLLAMA, wire.create_request)
async def create(request: web.Request, req: mpb.CreateModelRequest) -> web.StreamResponse:
    return await relay.stream(request, request.config_dict[SERVICE].models.CreateModel, req,
                              wire.NdjsonFramer(wire.progress_response), OLLAMA, streaming=requests.streams(req))


@route(OLLAMA)
async def check_blob(request: web.Request) -> web.Response:
    """HEAD /api/blobs/sha256:<hex>: 200 if the store holds it, 404 if not (headers only, as for any HEAD)."""
    return await relay.unary(request, request.config_dict[SERVICE].models.CheckBlob,
                             mpb.CheckBlobRequest(digest=request.match_info["digest"]), None, OLLAMA)


BLOB_CHUNK = 1 << 20


@route(OLLAMA)
async def create_blob(request: web.Request) -> web.Response:
    """POST /api/blobs/sha256:<hex>: 201 when written, 200 when the store already held it (the body is not
    read then). The body goes to the service in 1 MiB messages as it arrives, never whole in memory; a client
    that sends nothing for GENGATE_BODY_TIMEOUT is cut off."""
    models = request.config_dict[SERVICE].models
    digest = request.match_info["digest"]
    try:
        await models.CheckBlob(mpb.CheckBlobRequest(digest=digest), metadata=relay.metadata(request),
                               timeout=relay.timeout(request))
        return web.Response(status=200)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            return OLLAMA.rpc_error(exc)
    idle = request.config_dict[SETTINGS].body_timeout
    stalled: list[relay.BodyRefused] = []

    async def chunks() -> AsyncIterator[mpb.CreateBlobRequest]:
        yield mpb.CreateBlobRequest(digest=digest)
        while True:
            try:
                data = await asyncio.wait_for(request.content.read(BLOB_CHUNK), idle)
            except TimeoutError:
                # Raising here would only make grpc.aio cancel the call: note why, cancel it, and answer 408.
                stalled.append(relay.BodyRefused(408, f"request body not received within {idle:g} s"))
                call.cancel()
                return
            if not data:
                return
            yield mpb.CreateBlobRequest(data=data)
    call = models.CreateBlob(chunks(), metadata=relay.metadata(request))
    try:
        reply = await call
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
        if stalled:                                   # the service saw a cancelled upload and kept nothing
            response = OLLAMA.error_response(stalled[0].status, stalled[0].message)
            response.force_close()
            return response
        if isinstance(exc, asyncio.CancelledError):
            raise
        return OLLAMA.rpc_error(exc)
    return web.Response(status=201 if reply.created else 200)


def add_routes(app: web.Application) -> None:
    """Registers Ollama's /api routes."""
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/copy", copy)
    app.router.add_delete("/api/delete", delete)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/push", push)
    app.router.add_post("/api/create", create)
    app.router.add_route("HEAD", "/api/blobs/{digest}", check_blob)
    app.router.add_post("/api/blobs/{digest}", create_blob)
