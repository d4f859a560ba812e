"""`bench/gpu.sh`'s measurements, once it has built llama.cpp and installed what they need: a random-weight model
with SmolLM2's shapes, tensor types and vocabulary (bench/random_model.py), `llama-bench` tg128 and
`llama-batched-bench` at B = 8, 32, 64 on it (all layers on the GPU), and gengate (service + gateway, as `make run`
starts them) at N = 1, 8, 32, 64 concurrent streams through the gateway; one JSON report.

    python -m bench.gpu --desc DESC.json.gz --tools DIR --out REPORT.json [--ns 1,8,32,64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import random_model  # noqa: E402
from bench.bench import MODEL, Prompts, concurrent, gateway_stream, gengate, machine, summarize  # noqa: E402

TOKENS = 128


def tool(tools: Path, name: str, *args: str, timeout: float = 300) -> str:
    cmd = [str(tools / name), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return done.stdout


def llama_bench(tools: Path, gguf: Path, ngl: int) -> dict:
    out = json.loads(tool(tools, "llama-bench", "-m", str(gguf), "-ngl", str(ngl), "-p", "0", "-n", str(TOKENS),
                          "-r", "3", "-o", "json"))
    return {"tg128_tok_s": out[0]["avg_ts"], "backends": out[0].get("backends"), "gpu": out[0].get("gpu_info")}


def batched_bench(tools: Path, gguf: Path, ngl: int, batches: list[int]) -> list[dict]:
    ctx = max(batches) * (128 + TOKENS) + 256
    out = tool(tools, "llama-batched-bench", "-m", str(gguf), "-ngl", str(ngl), "-c", str(ctx), "-npp", "128",
               "-ntg", str(TOKENS), "-npl", ",".join(map(str, batches)), "--output-format", "jsonl")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [{"B": r["pl"], "tg_tok_s": r["speed_tg"], "pp_tok_s": r["speed_pp"], "total_tok_s": r["speed"]}
            for r in rows]


async def through_gengate(ns: list[int], rounds: int, threads: int) -> list[dict]:
    results = []
    async with gengate(max(ns), threads, 4096) as (url, _server):
        for n in ns:
            prompts = Prompts()
            await concurrent(gateway_stream, url, n, prompts)                     # warm-up, not recorded
            measured = [await concurrent(gateway_stream, url, n, prompts) for _ in range(rounds)]
            summary = summarize(measured)
            results.append({"N": n, "tok_s": summary["tok_s"], "tok_s_all": summary["tok_s_all"],
                            "ttft_p50_s": summary["ttft_p50"], "ttft_p99_s": summary["ttft_p99"],
                            "stream_rate_tok_s": summary["rate"]})
            print(f"gengate N={n}: {summary['tok_s']:.0f} tok/s", file=sys.stderr, flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--desc", required=True, help="bench/random_model.py's description of the model")
    ap.add_argument("--tools", type=Path, required=True, help="folder holding llama-bench and llama-batched-bench")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ns", default="1,8,32,64")
    ap.add_argument("--batches", default="8,32,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ngl", type=int, default=999, help="layers on the GPU (0: a CPU check of this script)")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    args = ap.parse_args()
    ns, batches = [int(n) for n in args.ns.split(",")], [int(b) for b in args.batches.split(",")]
    work = Path(tempfile.mkdtemp(prefix="gengate-gpu-"))
    report: dict = {"machine": machine(), "model": f"{MODEL} shapes, random weights", "tokens": TOKENS}

    start = time.monotonic()
    gguf = work / "model.gguf"
    random_model.write(args.desc, str(gguf))
    report["model_seconds"] = round(time.monotonic() - start, 1)

    from common import names
    from service.models.store import ModelStore
    os.environ["GENGATE_MODELS"] = str(work / "models")
    ModelStore(work / "models").import_file(MODEL, gguf)
    assert ModelStore(work / "models").get(names.parse(MODEL)) is not None

    report["llama_bench"] = llama_bench(args.tools, gguf, args.ngl)
    print(f"llama-bench tg128: {report['llama_bench']['tg128_tok_s']:.0f} tok/s", file=sys.stderr, flush=True)
    if (args.tools / "llama-batched-bench").exists():
        report["llama_batched_bench"] = batched_bench(args.tools, gguf, args.ngl, batches)
    report["gengate"] = asyncio.run(through_gengate(ns, args.rounds, args.threads))
    report["seconds"] = round(time.monotonic() - start, 1)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
