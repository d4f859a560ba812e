"""The process that runs one image model: stable-diffusion.cpp through stable-diffusion-cpp-python.

stable-diffusion.cpp's library carries its own copy of ggml, so it never shares a process with llama.cpp; and a
crash or an abort in it ends this process, never the service. The service starts one per loaded image model
(service.engines.diffusion) and talks to it in JSON lines:

    python -m service.engines.diffusion_worker CONFIG_JSON
        CONFIG_JSON: {"model": PATH, "components": {ROLE: PATH}, "threads": N, "probe": BOOL}
    → {"ready": true} once the model is loaded (a probe exits then), or {"error": "..."} and exit status 1;
    ← {"prompt", "width", "height", "steps", "seed", "cfg_scale", "sampler"} for each image;
    → {"step": i, "steps": n} after each diffusion step, then {"png": BASE64, "seconds": S} or {"error": "..."}.

The library's own output goes to stderr; stdout carries only these lines.
"""
from __future__ import annotations

import base64
import collections
import io
import json
import os
import re
import sys
import time
from typing import Any

# stable-diffusion-cpp-python's keyword for each separate component file.
COMPONENT_ARGUMENTS = {"vae": "vae_path", "llm": "llm_path", "clip_l": "clip_l_path", "clip_g": "clip_g_path",
                       "t5xxl": "t5xxl_path", "taesd": "taesd_path"}


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                         # whatever the library prints goes to stderr
    sys.stdout = sys.stderr

    def say(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    config = json.loads(sys.argv[1])
    # The files' paths are the server's: messages name the files by what they are.
    names = {config["model"]: "the model file",
             **{path: f"the {role} file" for role, path in config.get("components", {}).items()}}

    def scrub(text: str) -> str:
        for path, name in names.items():
            text = text.replace(path, name)
        return text
    try:
        import stable_diffusion_cpp as library
        from stable_diffusion_cpp import StableDiffusion

        failures = _collect_errors(library)
        paths = {COMPONENT_ARGUMENTS[role]: path for role, path in config.get("components", {}).items()}
        model = StableDiffusion(model_path=config["model"], vae_decode_only=True, verbose=False,
                                n_threads=int(config.get("threads") or os.cpu_count() or 1), **paths)
        if not model._model.model:       # a NULL context: 0.4.7's binding checks `is None`, which it never is
            raise RuntimeError(_summary(failures) or "the model did not load")
    except Exception as exc:  # noqa: BLE001   the binding raises what the library reports
        say({"error": scrub(f"stable-diffusion.cpp cannot load the model: {exc}")})
        os._exit(1)                      # no destructors: the library's may touch what failed to load
    say({"ready": True})
    if config.get("probe"):
        os._exit(0)
    for line in sys.stdin:
        job = json.loads(line)
        start = time.perf_counter()

        def progress(step: int, steps: int, seconds: float) -> None:
            say({"step": int(step), "steps": int(steps)})
        failures.clear()
        try:
            extra: dict[str, Any] = {}
            if job.get("cfg_scale") is not None:
                extra["cfg_scale"] = float(job["cfg_scale"])
            if job.get("sampler"):
                extra["sample_method"] = job["sampler"]
            images = model.generate_image(prompt=job["prompt"], width=int(job["width"]), height=int(job["height"]),
                                          sample_steps=int(job["steps"]), seed=int(job["seed"]),
                                          progress_callback=progress, **extra)
            if not images:
                raise RuntimeError(_summary(failures) or "no image came out")
            out = io.BytesIO()
            images[0].save(out, format="PNG")
            say({"png": base64.b64encode(out.getvalue()).decode("ascii"), "seconds": time.perf_counter() - start})
        except Exception as exc:  # noqa: BLE001   (a NULL result is a ValueError in the binding)
            say({"error": scrub(f"image generation failed: {_summary(failures) or exc}")})


def _collect_errors(library: Any) -> collections.deque[str]:
    """Routes the library's log through this process: its errors kept (the last few: why a load or a job failed,
    which the binding does not say), warnings and errors to stderr, the rest dropped."""
    failures: collections.deque[str] = collections.deque(maxlen=10_000)

    def log(level: int, text: bytes, data: Any) -> None:
        line = text.decode("utf-8", errors="replace").strip()
        if level >= 3:                   # SD_LOG_ERROR
            failures.append(line.split(" - ", 1)[-1])
        if level >= 2:
            print(line, file=sys.stderr, flush=True)
    callback = library.sd_log_callback(log)
    library.sd_set_log_callback(callback, None)
    _keep.append(callback)               # ctypes calls it for as long as the process lives
    return failures


_keep: list[Any] = []
MISSING = re.compile(r"tensor '(.+)' not in model file")


def _summary(failures: collections.deque[str]) -> str:
    """The library's errors in a sentence: how many tensors the file lacks (the first named), then the rest."""
    missing = [m[1] for line in failures if (m := MISSING.fullmatch(line))]
    others = [line for line in failures if not MISSING.fullmatch(line)]
    parts = [f"{len(missing)} tensor(s) missing from the file (the first: '{missing[0]}')"] if missing else []
    return "; ".join(parts + others[-3:])


if __name__ == "__main__":
    main()
