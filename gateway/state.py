"""What the gateway's app holds: its settings, the service stubs, metrics, and the drain's state.

Everything lives under a `web.AppKey` on the app (set by gateway.app.create_app); handlers read it
through `request.config_dict`, so route modules depend on this module, never on the app factory.
"""
from __future__ import annotations

import dataclasses

import grpc
import prometheus_client as prom
from aiohttp import web
from grpc_health.v1 import health_pb2_grpc

from gateway.settings import GatewaySettings
from gengate.v1 import generate_pb2_grpc as pb_grpc
from gengate.v1 import model_pb2_grpc as mpb_grpc


class GatewayMetrics:
    """HTTP requests by route and status, and their duration."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("gengate_http_requests", "HTTP requests by route and status",
                                     ["route", "status"], registry=self.registry)
        self.duration = prom.Histogram("gengate_http_request_duration_seconds", "HTTP request duration", ["route"],
                                       registry=self.registry)


@dataclasses.dataclass
class Service:
    """The channel to the gRPC service and its stubs."""

    channel: grpc.aio.Channel
    generate: pb_grpc.GenerateServiceStub
    models: mpb_grpc.ModelServiceStub
    health: health_pb2_grpc.HealthStub


@dataclasses.dataclass
class Drain:
    """Shutdown: when it began (loop time), and the streaming RPCs it may have to end."""

    since: float | None = None
    calls: set = dataclasses.field(default_factory=set)
    active: int = 0                      # requests being handled

    @property
    def draining(self) -> bool:
        return self.since is not None


class BodySlots:
    """Large request bodies being received: at most `limit` at once, so stalled uploads cannot fill memory."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.taken = 0


SETTINGS = web.AppKey("settings", GatewaySettings)
BODIES = web.AppKey("bodies", BodySlots)
METRICS = web.AppKey("metrics", GatewayMetrics)
SERVICE = web.AppKey("service", Service)
DRAIN = web.AppKey("drain", Drain)
REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_GONE = web.RequestKey("client_gone", bool)         # the client left mid-stream (logged as 499)
