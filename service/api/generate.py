"""The GenerateService servicer: a thin adapter from gRPC to the Generate pipeline.

Request ids, errors, metrics and the access log are service.api.observe's, for every RPC.
"""
from __future__ import annotations

import contextlib

import grpc

from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from service.generation.pipeline import Generation


class GenerateServicer(pb_grpc.GenerateServiceServicer):
    def __init__(self, generation: Generation):
        self._generation = generation

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        async with contextlib.aclosing(self._generation.run(request)) as replies:
            async for reply in replies:
                yield reply

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext):
        async with contextlib.aclosing(self._generation.chat(request)) as replies:
            async for reply in replies:
                yield reply

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        return await self._generation.embed(request)
