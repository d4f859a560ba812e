"""Prometheus metrics of the service (names after vLLM/TGI), served on their own port."""
from __future__ import annotations

import contextvars

import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily

# What the request in this task used its model for ("completion", "embedding" or "image"; "" for calls that
# use none): the pipeline sets it once the model is known, the interceptor labels the request's metrics with it.
CAPABILITY: contextvars.ContextVar[str] = contextvars.ContextVar("gengate_capability", default="")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("gengate_requests", "RPCs by method, final gRPC status code and the "
                                     "capability used", ["method", "code", "capability"], registry=r)
        self.ttft = prom.Histogram("gengate_time_to_first_token_seconds", "Request start to first text",
                                   buckets=_LATENCY, registry=r)
        self.inter_token = prom.Histogram("gengate_inter_token_latency_seconds", "Time between streamed pieces",
                                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1), registry=r)
        self.queue_wait = prom.Histogram("gengate_queue_wait_seconds", "Time waiting for a generation slot",
                                         buckets=_LATENCY, registry=r)
        self.e2e = prom.Histogram("gengate_request_duration_seconds", "Whole RPC, by method and capability",
                                  ["method", "capability"],
                                  buckets=_LATENCY, registry=r)
        self.generated = prom.Counter("gengate_generated_tokens", "Tokens generated", registry=r)
        self.prompt = prom.Counter("gengate_prompt_tokens", "Prompt tokens evaluated", registry=r)
        self.running = prom.Gauge("gengate_requests_running", "Requests holding a generation slot", registry=r)
        self.waiting = prom.Gauge("gengate_requests_waiting", "Requests waiting for a slot", registry=r)
        self.loaded = prom.Gauge("gengate_loaded_models", "Models loaded in memory", registry=r)
        self.kv_usage = prom.Gauge("gengate_kv_cache_usage_ratio",
                                   "Fraction of the loaded models' KV cache held by requests in flight (0-1)",
                                   registry=r)

        self.image_steps = prom.Counter("gengate_image_steps", "Diffusion steps done by image models", registry=r)
        self.images = prom.Counter("gengate_images_generated", "Images generated", registry=r)
        self.image_worker_memory = prom.Gauge("gengate_image_worker_memory_bytes",
                                              "Resident memory of the loaded image models' worker processes",
                                              registry=r)
        self.engine = prom.Info("gengate_engine", "The decoding engine and its layout (fast, or the batch-invariant "
                                "one of GENGATE_BATCH_INVARIANT)", registry=r)

    def count_decoding(self, stats: object) -> None:
        """Exports an engine's counts (its DecodeStats: read when scraped)."""
        self.registry.register(_DecodeCollector(stats))

    def serve(self, addr: str):
        """Starts the /metrics HTTP server on addr (host:port); returns it (its port: .server_port)."""
        host, _, port = addr.rpartition(":")
        server, _thread = prom.start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                                 registry=self.registry)
        return server


class _DecodeCollector(prom.registry.Collector):
    """The engine's DecodeStats as counters: batching efficiency is sampled / steps, prefix-cache hits
    cached_tokens."""

    FAMILIES = (("gengate_engine_tokens_sampled", "Tokens sampled by the engine", "sampled"),
                ("gengate_engine_decode_steps", "Decode steps (one batch for every running sequence)", "steps"),
                ("gengate_engine_prefill_chunks", "Prompt chunks and images evaluated", "prefill_chunks"),
                ("gengate_prompt_tokens_cached", "Prompt tokens whose KV a sequence still held", "cached_tokens"),
                ("gengate_engine_draft_tokens", "Draft tokens verified (speculative decoding)", "drafted"),
                ("gengate_engine_draft_tokens_accepted", "Draft tokens the model agreed with", "accepted"))

    def __init__(self, stats: object):
        self._stats = stats

    def collect(self):
        for name, documentation, field in self.FAMILIES:
            yield CounterMetricFamily(name, documentation, value=getattr(self._stats, field))
