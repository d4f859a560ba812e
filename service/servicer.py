"""The GenerateService servicer: a thin adapter from gRPC to the Generate pipeline."""
from __future__ import annotations

import contextlib
import logging

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from service.errors import GenerateError
from service.generation import Generation

log = logging.getLogger(__name__)
DOMAIN = "gengate.v1"


def rich_status(exc: GenerateError) -> grpc.Status:
    """The error as google.rpc.Status: ErrorInfo(reason) always, BadRequest when a field is to blame."""
    status = status_pb2.Status(code=exc.kind.code.value[0], message=exc.message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=exc.kind.name, domain=DOMAIN))
    if exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(status)


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
            status = rich_status(exc)
            await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
        except Exception:
            log.exception("Generate %s failed", request.model)
            await context.abort(grpc.StatusCode.INTERNAL, "an error was encountered while running the model")
