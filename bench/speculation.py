"""`make bench` (speculation): gengate's speculative decoding (prompt lookup) against plain decoding and against
llama-server's n-gram speculation, on the same GGUF and prompts, measured side by side in one run.

One stream, greedy, on two tasks: copy-heavy (repeat a given passage: every token can be drafted from the prompt)
and free writing (a story: little to look up). Systems: gengate through the gateway with speculation (the
default) and without (`draft_num_predict: 0` on the same server), llama-server plain and with
`--spec-type ngram-simple`, and llama-bench tg128 (plain decoding's kernel limit). They take turns, one request
each per round; the decode rate (tokens after the first over the time after the first) is the median of the
rounds after a dropped warm-up. Then N concurrent streams of each task through gengate, speculation on and off:
all streams' tokens over the round's wall time, every stream with a prompt of its own (numbered), so the prompts'
evaluation counts for both and no cache favours the one that runs second.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench import MODEL, NO_REPACK, Stream, gengate, llama_bench_tg, machine, model_path  # noqa: E402
from bench.llama_server import LLAMA_BENCH, ensure_llama_server  # noqa: E402
from bench.procs import Server, free_port, wait_ready  # noqa: E402

PASSAGE = ("The river town kept a ledger of every boat that passed its lock: the name, the cargo, the hour, and the "
           "number painted on the bow. The lock keeper wrote the numbers in a long column, one after another, and "
           "every evening he added them up and wrote the sum at the bottom of the page. In spring the column grew "
           "long, for the snow melted in the hills and the barges came down heavy with timber and stone; in autumn "
           "it grew long again, with apples, wool and the last of the grain before the river froze.")
TASKS = {
    "copy": f"<|im_start|>user\nRepeat this passage exactly, word for word:\n\n{PASSAGE}<|im_end|>\n"
            "<|im_start|>assistant\n",
    "free": "<|im_start|>user\nWrite a long story about a dragon who learns to bake bread.<|im_end|>\n"
            "<|im_start|>assistant\n",
}
TOKENS = 200


async def gengate_stream(session: aiohttp.ClientSession, url: str, text: str, draft: int | None) -> Stream:
    options: dict = {"temperature": 0, "num_predict": TOKENS}
    if draft is not None:
        options["draft_num_predict"] = draft
    body = {"model": MODEL, "prompt": text, "raw": True, "stream": True, "options": options}
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


async def llama_server_stream(session: aiohttp.ClientSession, url: str, text: str, draft: int | None) -> Stream:
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
        yield url
    finally:
        server.stop()


_numbers = iter(range(1000, 10**6))


def numbered(text: str) -> str:
    """The task with a number of its own at the start of the user's turn, so that no cached prompt helps whichever
    system runs after another (an aggregate rate counts the prompt's evaluation too)."""
    head, _, rest = text.partition("user\n")
    return f"{head}user\nRequest {next(_numbers)}. {rest}"


async def together(client, url: str, text: str, draft: int | None, n: int, fresh: bool = False) -> list[Stream]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*[client(session, url, numbered(text) if fresh else text, draft)
                                      for _ in range(n)])


def rate(streams: list[Stream]) -> float:
    """Aggregate decode rate of one round: all tokens over the wall time (one stream: its decode rate)."""
    if len(streams) == 1:
        return streams[0].rate
    return sum(s.tokens for s in streams) / (max(s.end for s in streams) - min(s.start for s in streams))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=8, help="concurrent streams for the second part")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctx", type=int, default=4096)
    args = ap.parse_args()
    gguf = model_path()
    binary = ensure_llama_server()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict = {"machine": machine()}

    systems = {"gengate, speculation": ("gengate", None), "gengate, plain": ("gengate", 0),
               "llama-server, plain": ("plain", None), "llama-server, ngram-simple": ("ngram", None)}
    runs: dict[str, dict[str, list[float]]] = {task: {name: [] for name in systems} for task in TASKS}
    tg: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        url_gengate, _ = await stack.enter_async_context(gengate(1, args.threads, args.ctx))
        url_plain = await stack.enter_async_context(llama_server(binary, gguf, 1, args.threads, args.ctx))
        url_ngram = await stack.enter_async_context(llama_server(binary, gguf, 1, args.threads, args.ctx,
                                                                 "--spec-type", "ngram-simple"))
        urls = {"gengate": url_gengate, "plain": url_plain, "ngram": url_ngram}
        for round_ in range(args.rounds + 1):
            tg.append(llama_bench_tg(LLAMA_BENCH, gguf, args.threads))
            for task, text in TASKS.items():
                for name, (kind, draft) in systems.items():
                    client = gengate_stream if kind == "gengate" else llama_server_stream
                    r = rate(await together(client, urls[kind], text, draft, 1))
                    if round_:
                        runs[task][name].append(r)
            print(f"round {round_} done", flush=True)
    single = results["single"] = {task: {name: statistics.median(v) for name, v in by.items()}
                                  for task, by in runs.items()}
    single["llama-bench tg128"] = statistics.median(tg[1:])

    wide: dict[str, dict[str, list[float]]] = {task: {"speculation": [], "plain": []} for task in TASKS}
    async with gengate(args.n, args.threads, args.ctx) as (url, _):
        for round_ in range(args.rounds + 1):
            for task, text in TASKS.items():
                order = (("speculation", None), ("plain", 0))
                for name, draft in order[::-1] if round_ % 2 else order:      # neither always runs first
                    r = rate(await together(gengate_stream, url, text, draft, args.n, fresh=True))
                    if round_:
                        wide[task][name].append(r)
    results["wide"] = {task: {k: statistics.median(v) for k, v in by.items()} for task, by in wide.items()}

    base = single["llama-bench tg128"]
    print(f"\n## Speculative decoding ({machine()}; {args.threads} threads; {MODEL}; greedy, up to {TOKENS} tokens; "
          f"median of {args.rounds})\n")
    print("One stream, decode rate in tokens/s (ratios: to gengate plain, to llama-bench tg128, to llama-server "
          "ngram-simple):\n")
    print("| task | gengate spec | gengate plain | llama-server plain | llama-server ngram | spec/plain | spec/tg128 "
          "| spec/llama-server ngram |")
    print("|---|---|---|---|---|---|---|---|")
    for task in TASKS:
        r = single[task]
        spec = r["gengate, speculation"]
        print(f"| {task} | {spec:.1f} | {r['gengate, plain']:.1f} | {r['llama-server, plain']:.1f} | "
              f"{r['llama-server, ngram-simple']:.1f} | {spec / r['gengate, plain']:.2f} | {spec / base:.2f} | "
              f"{spec / r['llama-server, ngram-simple']:.2f} |")
    print(f"\nllama-bench tg128: {base:.1f} tokens/s\n")
    print(f"{args.n} concurrent streams through gengate, aggregate tokens/s:\n")
    print("| task | speculation | plain | ratio |")
    print("|---|---|---|---|")
    for task, r in results["wide"].items():
        print(f"| {task} | {r['speculation']:.1f} | {r['plain']:.1f} | {r['speculation'] / r['plain']:.2f} |")
    (ROOT / ".cache").mkdir(exist_ok=True)
    (ROOT / ".cache" / "bench-speculation.json").write_text(json.dumps({"results": results, "runs": runs,
                                                                        "tg": tg, "wide": wide}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
