"""The GenerateService servicer: a thin adapter from gRPC to the Generate pipeline."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from service.errors import GenerateError
from service.generation import Generation
from service.metrics import Metrics

log = logging.getLogger(__name__)
DOMAIN = "gengate.v1"
DEADLINE_SLACK_S = 0.1


def rich_status(exc: GenerateError) -> grpc.Status:
    """The error as google.rpc.Status: ErrorInfo(reason) always, BadRequest when a field is to blame."""
    status = status_pb2.Status(code=exc.kind.code.value[0], message=exc.message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=exc.kind.name, domain=DOMAIN))
    if exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(status)


class GenerateServicer(pb_grpc.GenerateServiceServicer):
    def __init__(self, generation: Generation, metrics: Metrics):
        self._generation = generation
        self._metrics = metrics

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        async for reply in self._serve("Generate", self._generation.run(request), request.model, context):
            yield reply

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext):
        async for reply in self._serve("Chat", self._generation.chat(request), request.model, context):
            yield reply

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext):
        async def one():
            yield await self._generation.embed(request)
        result = None
        async for reply in self._serve("Embed", one(), request.model, context):
            result = reply
        return result

    async def _serve(self, method: str, replies, model: str, context: grpc.aio.ServicerContext):
        """Streams a pipeline's replies; errors become rich statuses; metrics and one log line."""
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        await context.send_initial_metadata((("x-request-id", request_id),))
        m = self._metrics
        start = time.perf_counter()
        code, tokens = grpc.StatusCode.CANCELLED, 0          # unless it ends otherwise
        try:
            # aclosing: a cancelled RPC (client gone, deadline) closes the pipeline at once,
            # which stops decoding before this handler returns.
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    if getattr(reply, "done", False):
                        tokens = reply.eval_count
                        m.generated.inc(reply.eval_count)
                        m.prompt.inc(reply.prompt_eval_count)
                    yield reply
            code = grpc.StatusCode.OK
        except GenerateError as exc:
            code = exc.kind.code
            status = rich_status(exc)
            await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
        except asyncio.CancelledError:
            # The client's deadline, not the client leaving: its cancel may arrive just before the server's own
            # timer fires, so "all but passed" counts too.
            remaining = context.time_remaining()
            if remaining is not None and remaining < DEADLINE_SLACK_S:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("request failed", extra={"request_id": request_id})
            await context.abort(grpc.StatusCode.INTERNAL, "an error was encountered while running the model")
        finally:
            elapsed = time.perf_counter() - start
            m.requests.labels(method, code.name).inc()
            m.e2e.observe(elapsed)
            log.info("%s model=%s code=%s tokens=%d seconds=%.3f", method, model, code.name, tokens, elapsed,
                     extra={"request_id": request_id})
