"""The gateway's settings (flags, then environment variables, then defaults)."""
from __future__ import annotations

import dataclasses

from common.settings import setting


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    """gengate HTTP gateway (Ollama's JSON API)."""

    http_addr: str = setting("127.0.0.1:11434", "GENGATE_HTTP_ADDR", "address the HTTP gateway listens on")
    workers: int = setting(1, "GENGATE_GATEWAY_WORKERS",
                           "gateway processes serving the address together (SO_REUSEPORT; 1: this process alone)")
    service_addr: str = setting("127.0.0.1:50051", "GENGATE_SERVICE_ADDR",
                                "gRPC target of the service: host:port, ipv4:a:p,b:p or dns:///name:port "
                                "(round-robin over all)")
    max_body_bytes: int = setting(16 << 20, "GENGATE_MAX_BODY_BYTES", "largest accepted request body (413 above)")
    body_timeout: float = setting(30.0, "GENGATE_BODY_TIMEOUT",
                                  "seconds a client has to send a request body (408 and the connection closed after)")
    max_large_bodies: int = setting(4, "GENGATE_MAX_LARGE_BODIES",
                                    "request bodies over 1 MiB (or of unknown length) received at once (503 beyond)")
    idle_timeout: float = setting(75.0, "GENGATE_IDLE_TIMEOUT",
                                  "seconds an idle keep-alive connection is kept open (behind a proxy: longer than "
                                  "the proxy's own idle timeout)")
    request_timeout: float = setting(0.0, "GENGATE_REQUEST_TIMEOUT",
                                     "deadline in seconds passed on each RPC (0: none); 504 when it passes")
    origins: str = setting("", "GENGATE_ORIGINS", "extra allowed browser origins, comma-separated (wildcards allowed)")
    service_tls_ca: str = setting("", "GENGATE_SERVICE_TLS_CA", "CA certificate (PEM) of the service: enables TLS")
    service_tls_cert: str = setting("", "GENGATE_SERVICE_TLS_CERT", "client certificate (PEM) for mTLS to the service")
    service_tls_key: str = setting("", "GENGATE_SERVICE_TLS_KEY", "client key (PEM) for mTLS to the service")
    drain_seconds: float = setting(30.0, "GENGATE_DRAIN_SECONDS",
                                   "on SIGTERM, how long in-flight requests may finish before they are ended")
    metrics_addr: str = setting("127.0.0.1:9465", "GENGATE_GATEWAY_METRICS_ADDR",
                                "where Prometheus /metrics is served ('' for off)")
    otlp_endpoint: str = setting("", "GENGATE_OTLP_ENDPOINT",
                                 "OpenTelemetry collector (OTLP/gRPC, e.g. http://otel-collector:4317): traces on "
                                 "('' off)")
    log_level: str = setting("INFO", "GENGATE_LOG_LEVEL", "logging level")
    log_format: str = setting("text", "GENGATE_LOG_FORMAT", "log lines as 'text' or 'json'")
