"""The serving layer's ceiling: gengate's real service and gateway over an engine that costs nothing but paces
tokens like a GPU batch.

`PacedEngine` gives every running stream one token per step (`--step-ms`, 5.5 ms by default: what llama.cpp
does with SmolLM2 on an H200 at 64 streams, 11.6k tok/s), the whole step handed to the event loop in one call,
as the batch engine's decode thread hands over its steps. So whatever rate falls short of N / step is the
serving path's: the service's event loop and gRPC, then the gateway and its JSON. This is the proxy for GPU
deployments measured on a machine without a GPU.

    python -m bench.paced [--streams 64,256] [--step-ms 5.5] [--tokens 200]

starts the service (over the paced engine, `python -m bench.paced serve`) and the gateway as processes, drives
N concurrent streams over gRPC (grpc.aio) and then through the gateway (aiohttp, NDJSON) with 1 and 2 worker
processes (GENGATE_GATEWAY_WORKERS), and prints the share of the paced rate each delivered and the CPU time per
token of each process (from /proc, user + system; a gateway's workers counted with it). Beside them, the floor:
a bare grpc.aio server paced alike (`python -m bench.paced floor`), one message a token and nothing else.
The client runs on the same machine and competes for its cores: on two cores the figures are a floor.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.engines.base import (  # noqa: E402
    Engine,
    Finish,
    Images,
    LoadOptions,
    Piece,
    Runner,
    Sampling,
    coalesce,
)

MODEL = "paced"


class _Stream:
    __slots__ = ("loop", "queue", "left", "prompt_len")

    def __init__(self, loop: asyncio.AbstractEventLoop, left: int, prompt_len: int):
        self.loop, self.queue, self.left, self.prompt_len = loop, asyncio.Queue(), left, prompt_len


def _deliver(items: list) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)


class PacedRunner(Runner):
    """Tokens are characters; every step, each running stream gets the piece "x " (one token). Its streams
    hand pieces over as the batch engine's do (a reader that fell behind gets them merged)."""

    def __init__(self, step: float):
        self.n_ctx = self.n_ctx_train = 1 << 20
        self.n_vocab = 0x110000
        self.metadata: dict = {}
        self._step = step
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._pace, daemon=True, name="paced")
        self._thread.start()

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(map(chr, tokens))

    def token_text(self, token: int) -> str:
        return chr(token)

    def _pace(self) -> None:
        next_step = time.perf_counter()
        while not self._closing:
            next_step += self._step
            delay = next_step - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                next_step = time.perf_counter()          # behind: no catching up in bursts
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            with self._lock:
                running = list(self._streams)
            for stream in running:
                stream.left -= 1
                item: object = Piece("x ")
                out = by_loop.setdefault(stream.loop, [])
                out.append((stream, item))
                if stream.left <= 0:
                    out.append((stream, Finish("length", stream.prompt_len, 1, 0, 1)))
                    with self._lock:
                        if stream in self._streams:       # (its reader may have left meanwhile)
                            self._streams.remove(stream)
            for loop, items in by_loop.items():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_deliver, items)

    async def generate(self, prompt: list[int], sampling: Sampling,
                       images: Images | None = None) -> AsyncGenerator[Piece | Finish, None]:
        stream = _Stream(asyncio.get_running_loop(), sampling.num_predict if sampling.num_predict > 0 else 1 << 30,
                         len(prompt))
        with self._lock:
            self._streams.append(stream)
        after: object = None
        try:
            while True:
                item, after = (after, None) if after is not None else (await stream.queue.get(), None)
                if isinstance(item, Piece):
                    item, after = coalesce(item, stream.queue)
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            with self._lock:
                if stream in self._streams:
                    self._streams.remove(stream)

    async def embed(self, tokens: list[int]) -> list[float]:
        return [0.0]

    async def close(self) -> None:
        self._closing = True


class PacedEngine(Engine):
    layout = "paced"

    def __init__(self, step: float):
        self._step = step

    async def load(self, path: str, options: LoadOptions, **files) -> Runner:
        return PacedRunner(self._step)


def floor_main(port: int, step_ms: float) -> None:
    """The floor under the service: a bare grpc.aio GenerateService that streams one message a stream every step
    (the model name and "x "), paced by one thread as the engine is. Nothing of gengate runs in it."""
    import grpc

    from gengate.v1 import generate_pb2 as pb
    from gengate.v1 import generate_pb2_grpc as pb_grpc

    streams: list[_Stream] = []
    lock = threading.Lock()

    class Bare(pb_grpc.GenerateServiceServicer):
        async def Generate(self, request, context):
            stream = _Stream(asyncio.get_running_loop(), request.options.num_predict, 0)
            with lock:
                streams.append(stream)
            try:
                for _ in range(stream.left):
                    await stream.queue.get()
                    yield pb.GenerateResponse(model=request.model, response="x ")
                yield pb.GenerateResponse(model=request.model, done=True)
            finally:
                with lock:
                    streams.remove(stream)

    def pace() -> None:
        while True:
            time.sleep(step_ms / 1000)
            with lock:
                items = [(s, None) for s in streams]
            if items:
                with contextlib.suppress(RuntimeError):
                    items[0][0].loop.call_soon_threadsafe(_deliver, items)

    async def run() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GenerateServiceServicer_to_server(Bare(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        threading.Thread(target=pace, daemon=True).start()
        await server.wait_for_termination()
    asyncio.run(run())


def serve_main(step_ms: float) -> None:
    from common import logs
    from common.settings import load
    from service.server import serve
    from service.settings import ServiceSettings

    settings = load(ServiceSettings, [])
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings, PacedEngine(step_ms / 1000)))


# -- the driver ----------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and of its live children (a gateway's workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != str(pid):
            with contextlib.suppress(OSError):
                child = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(child[1]) == pid:
                    total += (int(child[11]) + int(child[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def grpc_streams(target: str, n: int, tokens: int) -> tuple[int, float, list[float]]:
    import grpc

    from gengate.v1 import generate_pb2 as pb
    from gengate.v1 import generate_pb2_grpc as pb_grpc
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GenerateServiceStub(channel)

        async def one() -> tuple[int, float]:
            start, first, count = time.perf_counter(), 0.0, 0
            async for reply in stub.Generate(pb.GenerateRequest(model=MODEL, prompt="hi", raw=True,
                                                                options=pb.Options(num_predict=tokens))):
                if reply.response:            # "x " a token; a reader that fell behind gets several at once
                    count += reply.response.count("x ")
                    first = first or time.perf_counter() - start
            return count, first
        start = time.perf_counter()
        results = await asyncio.gather(*[one() for _ in range(n)])
        return sum(c for c, _ in results), time.perf_counter() - start, [f for _, f in results]


async def http_streams(url: str, n: int, tokens: int) -> tuple[int, float, list[float]]:
    import aiohttp
    body = {"model": MODEL, "prompt": "hi", "raw": True, "options": {"num_predict": tokens}}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def one() -> tuple[int, float]:
            start, first, count = time.perf_counter(), 0.0, 0
            async with session.post(url + "/api/generate", json=body) as resp:
                async for line in resp.content:
                    if line.strip() and not json.loads(line)["done"]:
                        count += line.count(b"x ")
                        first = first or time.perf_counter() - start
            return count, first
        start = time.perf_counter()
        results = await asyncio.gather(*[one() for _ in range(n)])
        return sum(c for c, _ in results), time.perf_counter() - start, [f for _, f in results]


async def measure(args) -> dict:
    from bench.procs import Server, free_port, wait_ready
    from service.models.store import ModelStore
    from tests.tiny_gguf import write_tiny_llama

    store_dir = Path(tempfile.mkdtemp(prefix="gengate-paced-"))
    ModelStore(store_dir).import_file(MODEL, write_tiny_llama(store_dir / "tiny.gguf"))
    grpc_port, http_port = free_port(), free_port()
    most = max(args.streams)
    env = {**os.environ, "GENGATE_GRPC_ADDR": f"127.0.0.1:{grpc_port}", "GENGATE_HTTP_ADDR": f"127.0.0.1:{http_port}",
           "GENGATE_SERVICE_ADDR": f"127.0.0.1:{grpc_port}", "GENGATE_MODELS": str(store_dir),
           "GENGATE_NUM_PARALLEL": str(most), "GENGATE_MAX_QUEUE": str(4 * most), "GENGATE_DEFAULT_MODEL": "",
           "GENGATE_KEEP_ALIVE": "-1", "GENGATE_LOG_LEVEL": "WARNING", "GENGATE_METRICS_ADDR": "",
           "GENGATE_GATEWAY_METRICS_ADDR": "", "GENGATE_API_KEY": "", "GENGATE_DRAIN_SECONDS": "1",
           "GENGATE_MAX_LARGE_BODIES": "1024"}
    server = Server()
    results: dict = {"step_ms": args.step_ms, "tokens": args.tokens, "workers": args.workers, "rows": []}
    try:
        service = server.start("paced-service", [sys.executable, "-m", "bench.paced", "serve", "--step-ms",
                                                 str(args.step_ms)], env)
        floor_port = free_port()
        floor = server.start("paced-floor", [sys.executable, "-m", "bench.paced", "floor", "--step-ms",
                                             str(args.step_ms), "--port", str(floor_port)], env)
        gateways, urls = {}, {}
        for w in args.workers:                          # one gateway per worker count, all started at once
            port = http_port if w == args.workers[0] else free_port()
            gateways[w] = server.start(f"gateway-{w}", [sys.executable, "-m", "gateway"],
                                       {**env, "GENGATE_HTTP_ADDR": f"127.0.0.1:{port}",
                                        "GENGATE_GATEWAY_WORKERS": str(w)})
            urls[w] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            await wait_ready(server, url + "/readyz")
            await http_streams(url, 2, 10)                              # warm: the model "loads"
        for n in args.streams:
            ideal = n / (args.step_ms / 1000)
            row: dict = {"streams": n, "ideal_tok_s": ideal}
            paths = ["floor", "grpc", *(f"gateway-{w}" for w in args.workers)]
            for path in paths * args.rounds:
                gateway = gateways[int(path.split("-")[1])] if "-" in path else gateways[args.workers[0]]
                served = floor if path == "floor" else service
                cpu0 = cpu_seconds(served.pid), cpu_seconds(gateway.pid)
                if path in ("grpc", "floor"):
                    port = floor_port if path == "floor" else grpc_port
                    count, wall, firsts = await grpc_streams(f"127.0.0.1:{port}", n, args.tokens)
                else:
                    count, wall, firsts = await http_streams(urls[int(path.split("-")[1])], n, args.tokens)
                cpu1 = cpu_seconds(served.pid), cpu_seconds(gateway.pid)
                if count != n * args.tokens:
                    raise SystemExit(f"{path}: {count} tokens of {n * args.tokens}")
                row.setdefault(path, []).append({
                    "tok_s": count / wall, "share": count / wall / ideal,
                    "service_us_per_token": (cpu1[0] - cpu0[0]) / count * 1e6,
                    "gateway_us_per_token": (cpu1[1] - cpu0[1]) / count * 1e6,
                    "ttft_p50_ms": statistics.median(firsts) * 1000})
            results["rows"].append(row)
    finally:
        server.stop()
    return results


def report(results: dict) -> str:
    med = lambda runs, key: statistics.median(r[key] for r in runs)     # noqa: E731
    workers = results.get("workers", [1])
    out = [f"Serving ceiling: paced engine, one token per stream every {results['step_ms']} ms, "
           f"{results['tokens']} tokens a stream (median of the rounds); the gateway with "
           f"{' and '.join(map(str, workers))} worker process(es)", "",
           "| streams | paced rate | bare grpc.aio: share | CPU/message | over gRPC | share | service CPU/token | "
           + " | ".join(f"gateway ×{w} | share | service / gateway CPU/token" for w in workers) + " |",
           "|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|---:|" * len(workers)]
    for row in results["rows"]:
        g, f = row["grpc"], row.get("floor")
        cells = [f"{row['streams']}", f"{row['ideal_tok_s']:.0f} tok/s",
                 f"{med(f, 'share'):.3f}" if f else "", f"{med(f, 'service_us_per_token'):.0f} µs" if f else "",
                 f"{med(g, 'tok_s'):.0f}", f"{med(g, 'share'):.3f}", f"{med(g, 'service_us_per_token'):.0f} µs"]
        for w in workers:
            h = row[f"gateway-{w}"]
            cells += [f"{med(h, 'tok_s'):.0f}", f"{med(h, 'share'):.3f}",
                      f"{med(h, 'service_us_per_token'):.0f} / {med(h, 'gateway_us_per_token'):.0f} µs"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="measure", choices=["measure", "serve", "floor"])
    ap.add_argument("--port", type=int, default=0, help="floor: the bare server's port")
    ap.add_argument("--streams", default="64,256", help="concurrent streams (default 64,256)")
    ap.add_argument("--step-ms", type=float, default=5.5, help="one token per stream every this many ms")
    ap.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per path and N (alternating); the median")
    ap.add_argument("--workers", default="1,2", help="gateway worker processes to compare (default 1,2)")
    args = ap.parse_args()
    if args.command == "serve":
        serve_main(args.step_ms)
        return
    if args.command == "floor":
        floor_main(args.port, args.step_ms)
        return
    args.streams = [int(n) for n in str(args.streams).split(",")]
    args.workers = [int(w) for w in str(args.workers).split(",")]
    results = asyncio.run(measure(args))
    print(report(results))
    out = ROOT / ".cache" / "paced.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
