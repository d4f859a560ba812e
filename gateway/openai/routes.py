"""OpenAI's API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/images/generations) on the relay:
bodies translated by gateway.openai.wire, streams as server-sent events."""
from __future__ import annotations

from aiohttp import web

from gateway import relay
from gateway.dialects import OPENAI
from gateway.openai import wire
from gateway.relay import route
from gateway.state import SERVICE


@route(OPENAI, wire.parse(wire.chat_request))
async def chat_completions(request: web.Request, parsed) -> web.StreamResponse:
    req, include_usage = parsed
    return await relay.stream(request, request.config_dict[SERVICE].generate.Chat, req,
                              wire.SseFramer(wire.ChatShape(include_usage)), OPENAI, streaming=req.stream)


@route(OPENAI, wire.parse(wire.completion_request))
async def completions(request: web.Request, parsed) -> web.StreamResponse:
    req, include_usage = parsed
    return await relay.stream(request, request.config_dict[SERVICE].generate.Generate, req,
                              wire.SseFramer(wire.CompletionShape(include_usage)), OPENAI, streaming=req.stream)


@route(OPENAI, wire.parse(wire.embedding_request))
async def embeddings(request: web.Request, parsed) -> web.Response:
    req, encoding = parsed
    return await relay.unary(request, request.config_dict[SERVICE].generate.Embed, req,
                             lambda reply: wire.embeddings_response(reply, encoding), OPENAI)


@route(OPENAI, wire.parse(wire.image_request))
async def images(request: web.Request, req) -> web.StreamResponse:
    return await relay.stream(request, request.config_dict[SERVICE].generate.Generate, req,
                              relay.Whole(wire.image_response), OPENAI, streaming=False)


def add_routes(app: web.Application) -> None:
    """Registers OpenAI's /v1 routes (its model routes: gateway.model_list)."""
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/images/generations", images)
