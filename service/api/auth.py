"""The bearer token gengate's services require when GENGATE_API_KEY is set."""
from __future__ import annotations

import hmac

import grpc


class BearerToken(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <GENGATE_API_KEY>` on gengate's services (health and
    reflection stay open for probes). Compared in constant time."""

    OPEN = ("/grpc.health.", "/grpc.reflection.")

    def __init__(self, key: str):
        self._expected = f"Bearer {key}".encode()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if handler is None or details.method.startswith(self.OPEN) \
                or hmac.compare_digest(given.encode(), self._expected):
            return handler

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthorized")

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
            yield
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(deny_stream, handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(deny, handler.request_deserializer,
                                                        handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)
