"""Client channels to the service, shared by the gateway (grpc.aio) and the CLI (blocking grpc).

Both take the same settings: a target (`host:port`, `ipv4:a:p,b:p` or `dns:///name:port`), and
GENGATE_SERVICE_TLS_CA (with GENGATE_SERVICE_TLS_CERT and _KEY for mTLS) to speak TLS.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from gengate.v1 import generate_pb2 as pb

GENERATE_SERVICE = pb.DESCRIPTOR.services_by_name["GenerateService"].full_name

# Round-robin over every address the target resolves to (several replicas behind DNS or an
# ipv4:a,b list); UNAVAILABLE retried, which gRPC does only before the first reply arrives,
# so a stream is never replayed after tokens were sent.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{"name": [{"service": GENERATE_SERVICE}], "retryPolicy": {
        "maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]}}],
})

# After the service goes away, reconnect attempts back off at most this long (gRPC's default grows to
# 120 s, so a gateway would take minutes to notice a service that came back).
MAX_RECONNECT_BACKOFF_MS = 2_000


@dataclasses.dataclass(frozen=True)
class Tls:
    """PEM files: the service's CA (enables TLS), and a client certificate and key for mTLS."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    @classmethod
    def from_env(cls) -> Tls:
        env = os.environ
        return cls(env.get("GENGATE_SERVICE_TLS_CA", ""), env.get("GENGATE_SERVICE_TLS_CERT", ""),
                   env.get("GENGATE_SERVICE_TLS_KEY", ""))

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.ca:
            return None
        read = lambda path: Path(path).read_bytes() if path else None     # noqa: E731
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def options(max_message_bytes: int | None = None) -> list[tuple[str, Any]]:
    """Channel options: the service config, keepalive pings (accepted by the service), a capped backoff.

    Pings continue through a call that sends nothing for minutes (a stream:false generation), so a vanished
    service is noticed within keepalive_time + keepalive_timeout rather than never."""
    opts: list[tuple[str, Any]] = [
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
    if max_message_bytes:
        opts += [("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)]
    return opts


def aio_channel(target: str, tls: Tls, opts: Sequence[tuple[str, Any]],
                interceptors: Sequence[Any] = ()) -> grpc.aio.Channel:
    credentials = tls.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(opts), interceptors=list(interceptors) or None)
    return grpc.aio.secure_channel(target, credentials, options=list(opts), interceptors=list(interceptors) or None)


def blocking_channel(target: str, tls: Tls, opts: Sequence[tuple[str, Any]]) -> grpc.Channel:
    credentials = tls.credentials()
    if credentials is None:
        return grpc.insecure_channel(target, options=list(opts))
    return grpc.secure_channel(target, credentials, options=list(opts))
