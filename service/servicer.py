"""The GenerateService servicer: a thin adapter from gRPC to the Generate pipeline."""
from __future__ import annotations

import contextlib
import logging

import grpc

from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from service.errors import GenerateError
from service.generation import Generation

log = logging.getLogger(__name__)
REASON_KEY = "gengate-error-reason"


class GenerateServicer(pb_grpc.GenerateServiceServicer):
    def __init__(self, generation: Generation):
        self._generation = generation

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        replies = self._generation.run(request)
        try:
            # aclosing: a cancelled RPC (client gone, deadline) closes the pipeline at once,
            # which stops decoding before this handler returns.
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    yield reply
        except GenerateError as exc:
            log.info("Generate %s: %s (%s)", request.model, exc.message, exc.kind.name)
            await context.abort(exc.kind.code, exc.message, trailing_metadata=((REASON_KEY, exc.kind.name),))
        except Exception:
            log.exception("Generate %s failed", request.model)
            await context.abort(grpc.StatusCode.INTERNAL, "an error was encountered while running the model")
