"""`make bench` (images): gengate's image generation against stable-diffusion-cpp-python called directly.

Both run the tiny random-weight FLUX.2-klein checkpoint the tests write (tests/tiny_diffusion.py: one double and
one single block of width 128, a one-layer Qwen3 text encoder, FLUX.2's VAE decoder at 32 base channels), with the
same threads. The direct side is the binding in a child process of its own, model loaded once; gengate's is the
gateway (NDJSON streamed) → gRPC → the model's worker process, model loaded (keep-alive) before timing. They take
turns, one image each, and the medians are reported: seconds per image, seconds per diffusion step (between
the first and the last step reported), and gengate's time over the binding's.

Random weights make noise, but the arithmetic is the real pipeline's: the text encoder, the steps and the VAE
decode, whose cost grows with the pixels (at 512 × 512 it is most of the time).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench import machine  # noqa: E402
from bench.procs import Server, free_port, wait_ready  # noqa: E402

MODEL = "bench-flux"
DIRECT = '''
import json, sys, time
from stable_diffusion_cpp import StableDiffusion
model = StableDiffusion(model_path=sys.argv[1], vae_decode_only=True, verbose=False, n_threads=int(sys.argv[2]))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    marks = []
    start = time.perf_counter()
    model.generate_image(prompt=job["prompt"], width=job["width"], height=job["height"], sample_steps=job["steps"],
                         seed=job["seed"], cfg_scale=1.0,
                         progress_callback=lambda step, steps, s: marks.append((step, time.perf_counter())))
    end = time.perf_counter()
    steps = [t for step, t in marks if step >= 1]
    print(json.dumps({"seconds": end - start, "step": (steps[-1] - steps[0]) / (len(steps) - 1)
                      if len(steps) > 1 else float("nan")}), flush=True)
'''


async def gengate_image(session: aiohttp.ClientSession, url: str, job: dict) -> dict:
    marks = []
    start = time.perf_counter()
    body = {"model": MODEL, "prompt": job["prompt"], "width": job["width"], "height": job["height"],
            "steps": job["steps"], "options": {"seed": job["seed"]}}
    async with session.post(url + "/api/generate", json=body) as resp:
        assert resp.status == 200, await resp.text()
        buffered = b""
        async for chunk in resp.content.iter_any():        # a line can be megabytes (the PNG)
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                reply = json.loads(line)
                if reply.get("completed") and not reply.get("done"):
                    marks.append(time.perf_counter())
                if reply.get("done"):
                    assert reply.get("image"), reply
    end = time.perf_counter()
    return {"seconds": end - start,
            "step": (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else float("nan")}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,256,512", help="square image sizes (default 64,256,512)")
    ap.add_argument("--steps", type=int, default=4, help="diffusion steps per image (FLUX.2-klein's default 4)")
    ap.add_argument("--rounds", type=int, default=5, help="images per size and system; medians reported")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from tests.tiny_diffusion import write_tiny_flux2
    work = ROOT / ".cache" / "bench-images"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = write_tiny_flux2(work / "flux2-klein-tiny.gguf")
    store = work / "models"

    direct = subprocess.Popen([sys.executable, "-c", DIRECT, str(checkpoint), str(args.threads)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert direct.stdin is not None and direct.stdout is not None
    assert json.loads(direct.stdout.readline()).get("ready")

    server = Server()
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "GENGATE_GRPC_ADDR": f"127.0.0.1:{grpc_port}", "GENGATE_HTTP_ADDR": f"127.0.0.1:{http_port}",
           "GENGATE_SERVICE_ADDR": f"127.0.0.1:{grpc_port}", "GENGATE_MODELS": str(store),
           "GENGATE_DEFAULT_MODEL": "", "GENGATE_KEEP_ALIVE": "-1", "GENGATE_NUM_THREADS": str(args.threads),
           "GENGATE_LOG_LEVEL": "WARNING", "GENGATE_METRICS_ADDR": "", "GENGATE_GATEWAY_METRICS_ADDR": "",
           "GENGATE_API_KEY": "", "GENGATE_DRAIN_SECONDS": "1"}
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        server.start("service", [sys.executable, "-m", "service"], env)
        server.start("gateway", [sys.executable, "-m", "gateway"], env)
        url = f"http://127.0.0.1:{http_port}"
        await wait_ready(server, url + "/readyz")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            data = checkpoint.read_bytes()
            import hashlib
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            async with session.post(f"{url}/api/blobs/{digest}", data=data) as resp:
                assert resp.status in (200, 201), await resp.text()
            async with session.post(url + "/api/create", json={"model": MODEL, "files": {checkpoint.name: digest},
                                                               "stream": False}) as resp:
                assert resp.status == 200, await resp.text()
            async with session.post(url + "/api/generate", json={"model": MODEL, "prompt": ""}) as resp:
                assert resp.status == 200, await resp.text()                 # loaded before timing
            for size in (int(s) for s in args.sizes.split(",")):
                runs: dict[str, list[dict]] = {"binding": [], "gengate": []}
                for i in range(args.rounds + 1):               # the first round warms both up, and is dropped
                    job = {"prompt": "a lighthouse at dusk", "width": size, "height": size, "steps": args.steps,
                           "seed": i}
                    direct.stdin.write(json.dumps(job) + "\n")
                    direct.stdin.flush()
                    one = json.loads(direct.stdout.readline())
                    other = await gengate_image(session, url, job)
                    if i:
                        runs["binding"].append(one)
                        runs["gengate"].append(other)
                results[str(size)] = runs
    finally:
        server.stop()
        direct.kill()

    print(f"## Image generation ({machine()}; {args.threads} threads; tiny FLUX.2-klein, {args.steps} steps, "
          f"median of {args.rounds})\n")
    print("| size | binding s/image | gengate s/image | gengate / binding | binding s/step | gengate s/step |")
    print("|---|---|---|---|---|---|")
    for size, runs in results.items():
        b = statistics.median(r["seconds"] for r in runs["binding"])
        g = statistics.median(r["seconds"] for r in runs["gengate"])
        bs = statistics.median(r["step"] for r in runs["binding"])
        gs = statistics.median(r["step"] for r in runs["gengate"])
        print(f"| {size}×{size} | {b:.3f} | {g:.3f} | {g / b:.2f} | {bs:.3f} | {gs:.3f} |")
    (ROOT / ".cache" / "bench-images.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
