"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) on the relay: bodies translated by
gateway.anthropic.wire, streams as Anthropic's named events."""
from __future__ import annotations

from aiohttp import web

from gateway import relay
from gateway.anthropic import wire
from gateway.dialects import ANTHROPIC
from gateway.relay import route
from gateway.state import SERVICE
from gengate.v1 import generate_pb2 as pb


@route(ANTHROPIC, wire.parse_messages)
async def messages(request: web.Request, parsed: tuple[pb.ChatRequest, int]) -> web.StreamResponse:
    req, estimate = parsed
    return await relay.stream(request, request.config_dict[SERVICE].generate.Chat, req,
                              wire.MessagesFramer(estimate, tuple(req.options.stop)), ANTHROPIC, streaming=req.stream)


@route(ANTHROPIC, wire.parse_count)
async def count_tokens(request: web.Request, req: pb.ChatRequest) -> web.StreamResponse:
    """The prompt's tokens as the model counts them: the conversation rendered by its template and tokenized by
    the service (a Chat with nothing to decode)."""
    return await relay.stream(request, request.config_dict[SERVICE].generate.Chat, req,
                              relay.Whole(lambda reply: {"input_tokens": reply.prompt_eval_count}), ANTHROPIC,
                              streaming=False)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
