"""OpenAI's Responses API (/v1/responses) on the relay: bodies translated by gateway.responses.wire, streams as
its named events."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import relay
from gateway.dialects import OPENAI
from gateway.relay import route
from gateway.responses import wire
from gateway.state import SERVICE
from gengate.v1 import generate_pb2 as pb


@route(OPENAI, wire.parse)
async def create(request: web.Request, parsed: tuple[pb.ChatRequest, dict[str, Any]]) -> web.StreamResponse:
    req, body = parsed
    return await relay.stream(request, request.config_dict[SERVICE].generate.Chat, req, wire.ResponsesFramer(body),
                              OPENAI, streaming=req.stream)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create)
