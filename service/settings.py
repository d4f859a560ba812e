"""The service's settings (flags, then environment variables, then defaults)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from common.settings import setting


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """gengate gRPC service."""

    grpc_addr: str = setting("127.0.0.1:50051", "GENGATE_GRPC_ADDR", "address the gRPC server listens on")
    models: Path = setting(Path("~/.gengate/models").expanduser(), "GENGATE_MODELS", "model store directory")
    default_model: str = setting("smollm2:135m", "GENGATE_DEFAULT_MODEL", "model loaded at start-up ('' for none)")
    keep_alive: str = setting("5m", "GENGATE_KEEP_ALIVE",
                              "how long an idle model stays loaded (duration or seconds; negative: forever)")
    context_length: int = setting(4096, "GENGATE_CONTEXT_LENGTH",
                                  "default num_ctx (capped at the model's training context)")
    num_threads: int = setting(0, "GENGATE_NUM_THREADS", "default CPU threads for decoding (0: one per core)")
    num_parallel: int = setting(4, "GENGATE_NUM_PARALLEL", "requests generating at once (further ones queue)")
    max_queue: int = setting(512, "GENGATE_MAX_QUEUE", "requests allowed to wait for a slot (503 beyond)")
    max_loaded_models: int = setting(3, "GENGATE_MAX_LOADED_MODELS",
                                     "models loaded at once; the least recently used idle one makes room")
    load_timeout: float = setting(300.0, "GENGATE_LOAD_TIMEOUT",
                                  "seconds a request waits for its model to load before it fails (0: no limit)")
    max_prompt_bytes: int = setting(1 << 20, "GENGATE_MAX_PROMPT_BYTES",
                                    "longest prompt, system, suffix or template accepted (400 above)")
    batch_invariant: bool = setting(False, "GENGATE_BATCH_INVARIANT",
                                    "decode in the batch-invariant layout: a request's logits are the same bit for "
                                    "bit alone or beside others (slower; see docs/benchmarks.md)")
    cpu_repack: str = setting("auto", "GENGATE_CPU_REPACK",
                              "repack CPU weights into ggml's faster layouts: auto (unless the build has AMX kernels, "
                              "which this host may refuse and which have known defects), on, off",
                              choices=("auto", "on", "off"))
    max_images: int = setting(16, "GENGATE_MAX_IMAGES", "most images one request may carry (400 above)")
    max_image_pixels: int = setting(4096 * 4096, "GENGATE_MAX_IMAGE_PIXELS",
                                    "largest image accepted, in pixels (width × height; 400 above)")
    model_jobs: int = setting(1, "GENGATE_MODEL_JOBS",
                              "quantizations and checkpoint conversions that run at once (further ones wait)")
    max_model_jobs_queue: int = setting(16, "GENGATE_MAX_MODEL_JOBS_QUEUE",
                                        "quantizations and conversions allowed to wait (503 beyond)")
    max_generated_pixels: int = setting(1024 * 1024, "GENGATE_MAX_GENERATED_PIXELS",
                                        "largest image an image model may generate, in pixels (width × height; "
                                        "400 above)")
    max_image_steps: int = setting(100, "GENGATE_MAX_IMAGE_STEPS", "most diffusion steps a request may ask for "
                                   "(400 above)")
    max_blob_bytes: int = setting(64 << 30, "GENGATE_MAX_BLOB_BYTES",
                                  "largest blob an upload may write (POST /api/blobs, CreateBlob)")
    max_message_bytes: int = setting(16 << 20, "GENGATE_MAX_MESSAGE_BYTES", "largest gRPC message either way")
    api_key: str = setting("", "GENGATE_API_KEY", "bearer token required on Generate (both transports); '' for none")
    tls_cert: str = setting("", "GENGATE_TLS_CERT", "server certificate chain (PEM): enables TLS on gRPC")
    tls_key: str = setting("", "GENGATE_TLS_KEY", "server private key (PEM)")
    tls_client_ca: str = setting("", "GENGATE_TLS_CLIENT_CA", "CA (PEM) for client certificates: requires mTLS")
    reflection: bool = setting(True, "GENGATE_REFLECTION",
                               "serve gRPC server reflection (grpcurl lists and calls the API without the proto)")
    drain_seconds: float = setting(30.0, "GENGATE_DRAIN_SECONDS",
                                   "on SIGTERM, how long in-flight requests may finish before they are ended")
    metrics_addr: str = setting("127.0.0.1:9464", "GENGATE_METRICS_ADDR",
                                "where Prometheus /metrics is served ('' for off)")
    otlp_endpoint: str = setting("", "GENGATE_OTLP_ENDPOINT",
                                 "OpenTelemetry collector (OTLP/gRPC, e.g. http://otel-collector:4317): traces on "
                                 "('' off)")
    log_level: str = setting("INFO", "GENGATE_LOG_LEVEL", "logging level")
    log_format: str = setting("text", "GENGATE_LOG_FORMAT", "log lines as 'text' or 'json'")
