"""GET /v1/models and /v1/models/{model}: OpenAI's shape, or Anthropic's to a client that sends anthropic-version
(its SDK always does). The route decides the shape; neither dialect knows of the other."""
from __future__ import annotations

from aiohttp import web

from gateway import relay
from gateway.anthropic import wire as anthropic
from gateway.dialects import ANTHROPIC, OPENAI
from gateway.openai import wire as openai
from gateway.relay import route
from gateway.state import SERVICE
from gengate.v1 import model_pb2 as mpb


def _anthropic(request: web.Request) -> bool:
    return "anthropic-version" in request.headers


@route(OPENAI)
async def list_models(request: web.Request) -> web.Response:
    models = request.config_dict[SERVICE].models
    if _anthropic(request):
        return await relay.unary(request, models.ListModels, mpb.ListModelsRequest(), anthropic.model_list,
                                 ANTHROPIC)
    return await relay.unary(request, models.ListModels, mpb.ListModelsRequest(), openai.model_list, OPENAI)


@route(OPENAI)
async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    models = request.config_dict[SERVICE].models
    if _anthropic(request):
        return await relay.unary(request, models.ShowModel, mpb.ShowModelRequest(model=name),
                                 lambda reply: anthropic.model_info(name, reply.modified_at), ANTHROPIC)
    return await relay.unary(request, models.ShowModel, mpb.ShowModelRequest(model=name),
                             lambda reply: openai.model_object(name, reply.modified_at), OPENAI)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
