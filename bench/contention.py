"""Plain decoding through gengate's gateway against llama-server, with what each server's threads cost: the
aggregate rate, and per token the servers' CPU, their context switches (all threads, from /proc) and the gateway's
CPU. With --passive, also gengate with libgomp's threads sleeping at barriers (OMP_WAIT_POLICY=PASSIVE) instead of
spinning. Systems take turns, one round each; medians.

    python -m bench.contention [--ns 1,2,8] [--rounds 5] [--passive]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench  # noqa: E402
from bench.llama_server import ensure_llama_server  # noqa: E402


def switches(pid: int) -> int:
    """Context switches (voluntary and not) of all the process's threads so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as status:
            total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
    return total


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(n: int, rounds: int, passive: bool) -> list[str]:
    prompts = bench.Prompts()
    results: dict[str, list[tuple[float, float, float, float]]] = {}
    async with contextlib.AsyncExitStack() as stack:
        urls, pids, gateways = {}, {}, {}
        variants = [("gengate", None)] + ([("gengate, passive", "PASSIVE")] if passive else [])
        for name, policy in variants:
            env_before = os.environ.get("OMP_WAIT_POLICY")
            if policy:
                os.environ["OMP_WAIT_POLICY"] = policy
            try:
                urls[name], server = await stack.enter_async_context(bench.gengate(n, 2, 4096))
            finally:
                os.environ.pop("OMP_WAIT_POLICY", None)
                if env_before is not None:
                    os.environ["OMP_WAIT_POLICY"] = env_before
            pids[name], gateways[name] = server.procs[0][1].pid, server.procs[1][1].pid
        urls["llama-server"], server = await stack.enter_async_context(
            bench.llama_server(ensure_llama_server(), bench.model_path(), n, 2, 4096))
        pids["llama-server"] = gateways["llama-server"] = server.procs[0][1].pid     # (no gateway: not shown)
        for name, url in urls.items():                                   # warm
            await bench.concurrent(client_of(name), url, n, prompts)
        for r in range(rounds):
            for name in (list(urls) if r % 2 == 0 else list(urls)[::-1]):
                pid, gateway = pids[name], gateways[name]
                before = switches(pid), cpu(pid), cpu(gateway)
                start = time.perf_counter()
                streams = await bench.concurrent(client_of(name), urls[name], n, prompts)
                wall = time.perf_counter() - start
                tokens = sum(s.tokens for s in streams)
                after = switches(pid), cpu(pid), cpu(gateway)
                results.setdefault(name, []).append((tokens / wall, (after[0] - before[0]) / tokens,
                                                     (after[1] - before[1]) / tokens * 1e3,
                                                     (after[2] - before[2]) / tokens * 1e6))
    med = {name: [statistics.median(x[i] for x in runs) for i in range(4)] for name, runs in results.items()}
    base = med["llama-server"][0]
    return [f"| {n} | {name} | {m[0]:.1f} | {m[0] / base:.3f}× | {m[2]:.1f} ms | {m[1]:.1f} | "
            f"{f'{m[3]:.0f} µs' if name != 'llama-server' else ''} |" for name, m in med.items()]


def client_of(name: str):
    return bench.llama_server_stream if name == "llama-server" else bench.gateway_stream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="1,2,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passive", action="store_true", help="also gengate with OMP_WAIT_POLICY=PASSIVE")
    args = ap.parse_args()
    print(bench.machine())
    print("| N | system | tok/s | ÷ llama-server | server CPU/token | context switches/token | gateway CPU/token |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.ns.split(",")):
        for line in asyncio.run(measure(n, args.rounds, args.passive)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
