"""`make bench`: gengate against raw llama-cpp-python and llama.cpp's llama-server, measured in one run.

It starts everything it needs (the gRPC service and the HTTP gateway as `make run` does,
llama-server built from the sources gengate pins, raw llama-cpp-python in a child process).
The systems compared in one part are all started, then take turns, one round each, so only
one of them works at a time and load from elsewhere on the machine falls on all of them alike.
It prints one Markdown report:

1. one stream, greedy, 128 tokens: llama.cpp's llama-bench tg128 (the kernels' limit), raw
   llama-cpp-python, gengate's engine in process and the gateway + gRPC in both layouts (decode
   rate ratios, time to first token added by the serving path);
2. N = 1, 2, 4, 8, 16 concurrent streams through the gateway (GENGATE_NUM_PARALLEL = N) in the
   default and the batch-invariant layouts, the engine in process, and `llama-server -np N` on the
   same GGUF with the same context per sequence: aggregate tokens per second and time to first
   token (p50, p99); plots of both against N (SVG);
3. the serving ceiling (bench/paced.py): the real service and gateway over an engine that only
   paces tokens, 64 and 256 streams, the gateway with 1 and 2 worker processes: the share of the paced rate
   delivered, CPU per token;
4. peak RSS of each process with the model loaded.

Every stream has its own prompt (no shared prefix, so no prompt cache helps either side), 87 tokens
of text (the same count for every prompt) ending in a number sequence that greedy decoding continues
past 128 tokens. gengate decodes plainly here (draft_num_predict 0), as llama-server does: speculation is
bench/speculation.py's.
TTFT is measured by the client: from sending the request to the first non-empty response line
(gateway NDJSON) or event (llama-server SSE). Aggregate throughput is all streams' generated
tokens over the wall time from the first request sent to the last stream's end.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.llama_server import LLAMA_BENCH, ensure_llama_server  # noqa: E402
from bench.procs import Server, free_port, wait_ready  # noqa: E402
from service.engines.llama import repack_weights  # noqa: E402

# Every system keeps its weights as gengate does (GENGATE_CPU_REPACK's auto choice, service/engines/llama.py:
# no repacking where the build has AMX kernels), and so does the bench.
REPACK = repack_weights(os.environ.get("GENGATE_CPU_REPACK", "auto"))[0]
NO_REPACK = () if REPACK else ("--no-repack",)
MODEL = "smollm2:135m"
TOKENS = 128
PASSAGE = ("The river town kept a ledger of every boat that passed its lock: the name, the cargo, the hour, "
           "and the number painted on the bow. The lock keeper wrote the numbers in a long column, one after another.")


def prompt(k: int) -> str:
    return f"Ledger {k}. {PASSAGE}\nNumbers: {k}, {k + 1}, {k + 2}, {k + 3}, {k + 4},"


class Prompts:
    """A fresh number for every stream, so no two requests share more than the first token or two. The
    numbers keep four digits (1000-9999), so every prompt has the same number of tokens and no system's TTFT
    gains from a shorter one."""

    def __init__(self) -> None:
        self.k = 1000

    def next(self) -> str:
        self.k = 1000 + (self.k - 1000 + 37) % 8990        # k + 4 keeps four digits too
        return prompt(self.k)


def model_path() -> Path:
    from common import names
    from service.models import catalog
    from service.models.store import ModelStore
    from service.settings import ServiceSettings
    store = ModelStore(ServiceSettings().models)
    entry = store.get(names.parse(MODEL)) or catalog.install(store, MODEL)
    return entry.path


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    pos = (len(values) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


class Stream:
    def __init__(self, start: float) -> None:
        self.start = start
        self.first: float | None = None
        self.end = start
        self.tokens = 0

    @property
    def ttft(self) -> float:
        return (self.first or self.end) - self.start

    @property
    def rate(self) -> float:
        """Decode rate: tokens after the first over the time after the first."""
        return (self.tokens - 1) / (self.end - self.first) if self.first and self.end > self.first else float("nan")


# -- clients ---------------------------------------------------------------------------------------
async def gateway_stream(session: aiohttp.ClientSession, url: str, text: str) -> Stream:
    body = {"model": MODEL, "prompt": text, "raw": True, "stream": True,
            "options": {"temperature": 0, "num_predict": TOKENS, "draft_num_predict": 0}}    # plain decoding
    s = Stream(time.perf_counter())
    async with session.post(url + "/api/generate", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.strip():
                continue
            reply = json.loads(line)
            if s.first is None and reply.get("response"):
                s.first = time.perf_counter()
            if reply.get("done"):
                s.tokens = reply["eval_count"]
    s.end = time.perf_counter()
    return s


async def llama_server_stream(session: aiohttp.ClientSession, url: str, text: str) -> Stream:
    body = {"prompt": text, "n_predict": TOKENS, "temperature": 0, "stream": True, "cache_prompt": True}
    s = Stream(time.perf_counter())
    async with session.post(url + "/completion", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if s.first is None and event.get("content"):
                s.first = time.perf_counter()
            if event.get("stop"):
                s.tokens = event.get("tokens_predicted") or event.get("timings", {}).get("predicted_n", 0)
    s.end = time.perf_counter()
    return s


async def concurrent(client, url: str, n: int, prompts: Prompts) -> list[Stream]:
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        texts = [prompts.next() for _ in range(n)]
        return await asyncio.gather(*[client(session, url, t) for t in texts])


def summarize(rounds: list[list[Stream]]) -> dict:
    aggregates = [sum(s.tokens for s in r) / (max(s.end for s in r) - min(s.start for s in r)) for r in rounds]
    ttfts = [s.ttft for r in rounds for s in r]
    return {"tok_s": statistics.median(aggregates), "tok_s_all": aggregates,
            "ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99),
            "rate": statistics.median(s.rate for r in rounds for s in r),
            "tokens": [s.tokens for r in rounds for s in r]}


@contextlib.asynccontextmanager
async def gengate(parallel: int, threads: int, ctx: int, invariant: bool = False):
    server = Server()
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "GENGATE_GRPC_ADDR": f"127.0.0.1:{grpc_port}", "GENGATE_HTTP_ADDR": f"127.0.0.1:{http_port}",
           "GENGATE_SERVICE_ADDR": f"127.0.0.1:{grpc_port}",
           "GENGATE_NUM_PARALLEL": str(parallel), "GENGATE_MAX_QUEUE": "256", "GENGATE_KEEP_ALIVE": "-1",
           "GENGATE_CONTEXT_LENGTH": str(ctx), "GENGATE_NUM_THREADS": str(threads), "GENGATE_DEFAULT_MODEL": MODEL,
           "GENGATE_LOG_LEVEL": "WARNING", "GENGATE_METRICS_ADDR": "", "GENGATE_GATEWAY_METRICS_ADDR": "",
           "GENGATE_API_KEY": "", "GENGATE_DRAIN_SECONDS": "1",
           "GENGATE_BATCH_INVARIANT": "true" if invariant else "false"}
    try:
        server.start("service", [sys.executable, "-m", "service"], env)
        server.start("gateway", [sys.executable, "-m", "gateway"], env)
        url = f"http://127.0.0.1:{http_port}"
        await wait_ready(server, url + "/readyz")
        yield url, server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def llama_server(binary: Path, gguf: Path, parallel: int, threads: int, ctx: int, *extra: str):
    server = Server()
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(parallel),
           "-c", str(ctx * parallel), "-t", str(threads), "-tb", str(threads), "--no-webui", "--log-disable",
           *NO_REPACK, *extra]
    try:
        server.start("llama-server", cmd, dict(os.environ))
        url = f"http://127.0.0.1:{port}"
        await wait_ready(server, url + "/health")
        yield url, server
    finally:
        server.stop()


# -- raw llama-cpp-python (in a child process of its own) --------------------------------------------
RAW_CHILD = r"""
import json, os, sys, time
import llama_cpp.llama_cpp as low
from llama_cpp import Llama
from service.engines.llama import repack_weights
_defaults = low.llama_model_default_params
REPACK = repack_weights(os.environ.get("GENGATE_CPU_REPACK", "auto"))[0]


def _params():                # weights in the layout gengate uses (GENGATE_CPU_REPACK's choice)
    params = _defaults()
    params.use_extra_bufts = REPACK
    return params


low.llama_model_default_params = _params
path, threads, ctx, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=ctx, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
            verbose=False)
llm.create_completion("warm up", max_tokens=4, temperature=0)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    text = json.loads(line)
    start = time.perf_counter(); first = None; reason = None
    for chunk in llm.create_completion(text, max_tokens=tokens, temperature=0, stream=True):
        if first is None and chunk["choices"][0]["text"]:
            first = time.perf_counter()
        reason = chunk["choices"][0]["finish_reason"] or reason
    rss = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"start": start, "first": first, "end": time.perf_counter(), "reason": reason, "rss": rss}),
          flush=True)
"""


class RawLlamaCpp:
    """llama-cpp-python's Llama in a child process; one streamed completion per call."""

    def __init__(self, gguf: Path, threads: int, ctx: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RAW_CHILD, str(gguf), str(threads), str(ctx), str(TOKENS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        json.loads(self.proc.stdout.readline())
        self.rss = 0.0

    def stream(self, text: str) -> list[Stream]:
        self.proc.stdin.write(json.dumps(text) + "\n")
        self.proc.stdin.flush()
        item = json.loads(self.proc.stdout.readline())
        if item["reason"] != "length":
            raise SystemExit(f"raw llama-cpp-python stopped early ({item['reason']})")
        s = Stream(item["start"])
        s.first, s.end, s.tokens = item["first"], item["end"], TOKENS
        self.rss = item["rss"]
        return [s]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)



# -- the batch engine in process (no gRPC, no gateway), in a child process of its own ------------------------
ENGINE_CHILD = r"""
import asyncio, json, sys, time
from service.engines.base import Finish, LoadOptions, Sampling
from service.engines.batch import BatchEngine
path, threads, ctx, tokens, n, invariant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), sys.argv[6] == "1"


async def main():
    runner = await BatchEngine(n, invariant=invariant).load(path, LoadOptions(num_ctx=ctx, num_thread=threads))
    add_bos = bool(runner.metadata.get("tokenizer.ggml.add_bos_token", True))

    async def one(text):
        prompt = runner.tokenize(text, add_bos=add_bos)            # as the service tokenizes a raw prompt
        start, first, count = time.perf_counter(), None, 0
        async for item in runner.generate(prompt, Sampling(seed=0, temperature=0, num_predict=tokens,
                                                           draft_num_predict=0)):
            if isinstance(item, Finish):
                count = item.eval_count
            elif first is None and item.text:
                first = time.perf_counter()
        return {"start": start, "first": first, "end": time.perf_counter(), "tokens": count}

    await one("warm up")
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        print(json.dumps(await asyncio.gather(*[one(t) for t in json.loads(line)])), flush=True)
    await runner.close()

asyncio.run(main())
"""


class EngineInProcess:
    """gengate's BatchEngine driven directly (what the served path adds is then the difference)."""

    def __init__(self, gguf: Path, threads: int, ctx: int, n: int, invariant: bool = False) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, str(gguf), str(threads), str(ctx),
                                      str(TOKENS), str(n), "1" if invariant else "0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        json.loads(self.proc.stdout.readline())

    def streams(self, texts: list[str]) -> list[Stream]:
        self.proc.stdin.write(json.dumps(texts) + "\n")
        self.proc.stdin.flush()
        out = []
        for item in json.loads(self.proc.stdout.readline()):
            s = Stream(item["start"])
            s.first, s.end, s.tokens = item["first"], item["end"], item["tokens"]
            out.append(s)
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def llama_bench_tg(binary: Path, gguf: Path, threads: int) -> float:
    """llama.cpp's llama-bench tg128 on the same GGUF and threads: the single-stream limit of these kernels."""
    out = subprocess.run([str(binary), "-m", str(gguf), "-t", str(threads), "-p", "0", "-n", str(TOKENS), "-r", "3",
                          "-o", "json", *(["--repack", "0"] if NO_REPACK else [])],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return float(json.loads(out)[0]["avg_ts"])


# -- the run -------------------------------------------------------------------------------------
def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    import llama_cpp
    return (f"{cpu}, {os.cpu_count()} cores, {mem / 2**20:.0f} GiB RAM, no GPU; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}")


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="1,2,4,8,16", help="concurrent stream counts (default 1,2,4,8,16)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per measurement; the median is reported")
    ap.add_argument("--ctx", type=int, default=4096, help="context per sequence (num_ctx / llama-server -c / -np)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for every system")
    ap.add_argument("--simple", action="store_true",
                    help="also gengate with one request at a time (GENGATE_NUM_PARALLEL=1)")
    ap.add_argument("--fa-off", action="store_true", help="also llama-server with flash attention off")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the serving ceiling (bench/paced.py)")
    ap.add_argument("--json", type=Path, default=ROOT / ".cache" / "bench.json", help="raw results written here")
    ap.add_argument("--plots", type=Path, default=ROOT / ".cache", help="where the SVG plots are written")
    args = ap.parse_args()
    ns = [int(n) for n in args.ns.split(",")]
    gguf = model_path()
    binary = ensure_llama_server()
    prompts = Prompts()
    results: dict = {"machine": machine(), "load_before": os.getloadavg()}
    rss: dict[str, float] = {}
    print(f"machine: {results['machine']}; load average {os.getloadavg()[0]:.2f}", flush=True)

    # 1. One stream: llama-bench, raw llama-cpp-python, the engine in process and the served engine in both
    # layouts, in alternating rounds.
    print("single stream ...", flush=True)
    raw = RawLlamaCpp(gguf, args.threads, args.ctx)
    engine = EngineInProcess(gguf, args.threads, args.ctx, 1)
    runs: dict[str, list] = {"raw": [], "engine": [], "fast": [], "invariant": []}
    bench_tg: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for layout in ("fast", "invariant"):
            urls[layout], single_server = await stack.enter_async_context(
                gengate(1, args.threads, args.ctx, invariant=layout == "invariant"))
            await concurrent(gateway_stream, urls[layout], 1, prompts)
        for _ in range(3 * args.rounds + 2):        # one stream is quick: more rounds, a steadier median
            bench_tg.append(llama_bench_tg(LLAMA_BENCH, gguf, args.threads))
            runs["raw"].append(raw.stream(prompts.next()))
            runs["engine"].append(engine.streams([prompts.next()]))
            for layout in ("fast", "invariant"):
                runs[layout].append(await concurrent(gateway_stream, urls[layout], 1, prompts))
    rss["gengate service, 1 sequence"] = single_server.rss.get("service", float("nan"))
    rss["gengate gateway"] = single_server.rss.get("gateway", float("nan"))
    raw.close()
    engine.close()
    rss["raw llama-cpp-python (1 sequence)"] = raw.rss
    # The first two rounds warm the page cache and the allocators.
    single = results["single"] = {name: summarize(r[2:]) for name, r in runs.items()}
    single["llama-bench"] = {"rate": statistics.median(bench_tg[2:]), "all": bench_tg}

    # 2. N concurrent streams: every system started, then one round each in turn (so load from
    # elsewhere on the machine falls on all of them alike).
    systems = [("fast", "gengate"), ("invariant", "gengate"), ("engine", "engine"), ("llama-server", "llama-server")]
    systems += [("simple", "gengate")] if args.simple else []
    systems += [("llama-server -fa off", "llama-server")] if args.fa_off else []
    table: dict[int, dict] = {}
    for n in ns:
        print(f"{n} concurrent streams ...", flush=True)
        async with contextlib.AsyncExitStack() as stack:
            urls, clients, servers = {}, {}, {}
            for name, kind in systems:
                if kind == "gengate":
                    urls[name], servers[name] = await stack.enter_async_context(gengate(
                        1 if name == "simple" else n, args.threads, args.ctx, invariant=name == "invariant"))
                    clients[name] = gateway_stream
                elif kind == "engine":
                    inproc = EngineInProcess(gguf, args.threads, args.ctx, n)
                    stack.callback(inproc.close)
                    urls[name] = ""
                    clients[name] = inproc
                else:
                    extra = ("-fa", "off") if name.endswith("off") else ()
                    urls[name], servers[name] = await stack.enter_async_context(
                        llama_server(binary, gguf, n, args.threads, args.ctx, *extra))
                    clients[name] = llama_server_stream
            runs = {name: [] for name, _ in systems}
            for round_ in range(args.rounds + 1):          # the first round warms up, unrecorded
                for name, kind in systems:
                    if kind == "engine":
                        streams = clients[name].streams([prompts.next() for _ in range(n)])
                    else:
                        streams = await concurrent(clients[name], urls[name], n, prompts)
                    if round_:
                        runs[name].append(streams)
        table[n] = {name: summarize(r) for name, r in runs.items()}
        for name, server in servers.items():
            for process, mib in server.rss.items():
                rss[f"{name}: {process} ({n} sequences)"] = mib
    results["concurrent"] = table

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))          # kept, whatever comes next

    # 3. The serving ceiling: the real service and gateway over a paced engine.
    if not args.no_ceiling:
        print("serving ceiling ...", flush=True)
        from bench import paced
        try:
            results["ceiling"] = await paced.measure(argparse.Namespace(streams=[64, 256], step_ms=5.5, tokens=200,
                                                                        rounds=args.rounds, workers=[1, 2]))
        except (SystemExit, Exception) as exc:        # the report of parts 1 and 2 still comes
            print(f"serving ceiling failed: {exc}", flush=True)
    results["rss_mib"] = rss
    results["load_after"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    from bench import plot
    plot.write(table, args.plots)

    # The report.
    out = [f"Machine: {results['machine']}.",
           f"Model {MODEL} ({gguf.stat().st_size / 2**20:.0f} MiB GGUF, Q4_1), greedy, {TOKENS} tokens per stream, "
           f"{args.threads} threads everywhere, {args.ctx} tokens of context per sequence, median of "
           f"{3 * args.rounds} rounds (one stream) and {args.rounds} rounds (N streams). "
           f"Load average {results['load_before'][0]:.2f} before, "
           f"{results['load_after'][0]:.2f} after.", ""]
    limit = single["llama-bench"]["rate"]
    eng = single["engine"]
    out += ["1. One stream", "",
            "| | decode tok/s | ÷ llama-bench tg128 | ÷ engine in process | TTFT | TTFT added to the engine's |",
            "|---|---:|---:|---:|---:|---:|",
            f"| llama-bench tg128 (llama.cpp, the kernels' limit) | {limit:.1f} | 1.000 | | | |"]
    for name, label in (("raw", "raw llama-cpp-python, in process"), ("engine", "gengate engine, in process"),
                        ("fast", "gateway + gRPC, default layout"), ("invariant", "gateway + gRPC, invariant")):
        r = single[name]
        out.append(f"| {label} | {r['rate']:.1f} | {r['rate'] / limit:.3f} | {r['rate'] / eng['rate']:.3f} | "
                   f"{fmt_s(r['ttft_p50'])} | {(r['ttft_p50'] - eng['ttft_p50']) * 1000:+.1f} ms |")
    names = [name for name, _ in systems]
    label = {"fast": "gengate (default)", "invariant": "gengate invariant", "engine": "engine in process",
             "simple": "gengate simple"}
    out += ["", "2. N concurrent streams: aggregate tok/s (all streams' tokens over the wall time)", "",
            "| N | " + " | ".join(label.get(n, n) for n in names) + " | default ÷ llama-server | invariant ÷ "
            "llama-server | served ÷ in process |", "|---:|" + "---:|" * (len(names) + 3)]
    for n, row in table.items():
        s = row["llama-server"]["tok_s"]
        out.append(f"| {n} | " + " | ".join(f"{row[name]['tok_s']:.1f}" for name in names)
                   + f" | {row['fast']['tok_s'] / s:.2f}× | {row['invariant']['tok_s'] / s:.2f}× | "
                   f"{row['fast']['tok_s'] / row['engine']['tok_s']:.2f}× |")
    out += ["", "Time to first token, p50 / p99", "", "| N | " + " | ".join(label.get(n, n) for n in names) + " |",
            "|---:|" + "---:|" * len(names)]
    for n, row in table.items():
        out.append(f"| {n} | " + " | ".join(f"{fmt_s(row[name]['ttft_p50'])} / {fmt_s(row[name]['ttft_p99'])}"
                                           for name in names) + " |")
    if "ceiling" in results:
        from bench import paced
        out += ["", "3. " + paced.report(results["ceiling"])]
    out += ["", "4. Peak RSS (VmHWM) with the model loaded", "", "| process | peak RSS |", "|---|---:|"]
    out += [f"| {name} | {mib:.0f} MiB |" for name, mib in rss.items()]
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the servers started here are stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main())
