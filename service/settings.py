"""Process settings: command-line flags, then environment variables, then defaults.

Each process has one settings object, a frozen dataclass whose fields carry their
environment variable and help text; `load` builds it. The README lists every variable.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def setting(default: Any, env: str, help: str) -> Any:
    """Declares one setting of a settings dataclass."""
    return dataclasses.field(default=default, metadata={"env": env, "help": help})


def _convert(kind: type, raw: str, name: str) -> Any:
    if kind is bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is Path:
        return Path(raw).expanduser()
    return raw


def load(cls: type[T], argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> T:
    """Builds `cls` from flags (`--field-name`), then environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    types = {"bool": bool, "int": int, "float": float, "Path": Path, "str": str}
    parser = argparse.ArgumentParser(prog=cls.__module__.split(".")[0], description=cls.__doc__)
    for f in dataclasses.fields(cls):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=f.metadata["env"],
                            help=f"{f.metadata['help']} (env {f.metadata['env']}, default {f.default!r})")
    args = parser.parse_args(argv)
    values = {}
    for f in dataclasses.fields(cls):
        kind = types[str(hints[f.name])]
        raw = getattr(args, f.name)
        if raw is None:
            raw = environ.get(f.metadata["env"])
        if raw is not None:
            try:
                values[f.name] = _convert(kind, raw, f.name)
            except ValueError as exc:
                parser.error(f"{f.metadata['env']}: {exc}")
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """gengate gRPC service."""

    grpc_addr: str = setting("127.0.0.1:50051", "GENGATE_GRPC_ADDR", "address the gRPC server listens on")
    models: Path = setting(Path("~/.gengate/models").expanduser(), "GENGATE_MODELS", "model store directory")
    default_model: str = setting("smollm2:135m", "GENGATE_DEFAULT_MODEL", "model loaded at start-up ('' for none)")
    keep_alive: str = setting("5m", "GENGATE_KEEP_ALIVE",
                              "how long an idle model stays loaded (duration or seconds; negative: forever)")
    context_length: int = setting(4096, "GENGATE_CONTEXT_LENGTH", "default num_ctx (capped at the model's training context)")
    num_threads: int = setting(0, "GENGATE_NUM_THREADS", "default CPU threads for decoding (0: one per core)")
    num_parallel: int = setting(4, "GENGATE_NUM_PARALLEL", "requests generating at once (further ones queue)")
    max_queue: int = setting(512, "GENGATE_MAX_QUEUE", "requests allowed to wait for a slot (503 beyond)")
    max_loaded_models: int = setting(3, "GENGATE_MAX_LOADED_MODELS",
                                     "models loaded at once; the least recently used idle one makes room")
    load_timeout: float = setting(300.0, "GENGATE_LOAD_TIMEOUT",
                                  "seconds a request waits for its model to load before it fails (0: no limit)")
    engine: str = setting("batch", "GENGATE_ENGINE",
                          "decoding engine: batch (requests share one context, decoded together) or simple "
                          "(one request at a time)")
    max_prompt_bytes: int = setting(1 << 20, "GENGATE_MAX_PROMPT_BYTES",
                                    "longest prompt, system, suffix or template accepted (400 above)")
    max_message_bytes: int = setting(16 << 20, "GENGATE_MAX_MESSAGE_BYTES", "largest gRPC message either way")
    api_key: str = setting("", "GENGATE_API_KEY", "bearer token required on Generate (both transports); '' for none")
    tls_cert: str = setting("", "GENGATE_TLS_CERT", "server certificate chain (PEM): enables TLS on gRPC")
    tls_key: str = setting("", "GENGATE_TLS_KEY", "server private key (PEM)")
    tls_client_ca: str = setting("", "GENGATE_TLS_CLIENT_CA", "CA (PEM) for client certificates: requires mTLS")
    reflection: bool = setting(True, "GENGATE_REFLECTION",
                               "serve gRPC server reflection (grpcurl lists and calls the API without the proto)")
    drain_seconds: float = setting(30.0, "GENGATE_DRAIN_SECONDS",
                                   "on SIGTERM, how long in-flight requests may finish before they are ended")
    metrics_addr: str = setting("127.0.0.1:9464", "GENGATE_METRICS_ADDR", "where Prometheus /metrics is served ('' for off)")
    log_level: str = setting("INFO", "GENGATE_LOG_LEVEL", "logging level")
    log_format: str = setting("text", "GENGATE_LOG_FORMAT", "log lines as 'text' or 'json'")
