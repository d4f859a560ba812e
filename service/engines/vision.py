"""A model's vision projector through llama.cpp's libmtmd (llama_cpp.mtmd_cpp): loading it, turning an image
into prompt chunks, and evaluating an image chunk into a sequence's KV cells.

libmtmd aborts the process (GGML_ASSERT) on some malformed projectors: a metadata value of the wrong type, a
tensor of the wrong shape (met in the warm-up graph). So a projector is first loaded in a child process
(`python -m service.engines.vision MODEL PROJECTOR`); only a projector that survives that is loaded here. The
verdict is kept per file pair. Creating a model with a projector runs the same check, so a bad pair is refused
with a 400 then rather than failing at every load.

Image chunks are evaluated by libmtmd's helper on the decode thread, one at a time (an mtmd context is not safe
for concurrent encoding); tokenizing (`mtmd_tokenize`) is safe from any thread.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd

from service.engines.base import Bitmap, ImageChunk, LoadError

PROBE_SECONDS = 120
_REASON = "reason: "                 # how the probe's process says why it refused


_log = logging.getLogger("llama-cpp-python")


@llama_cpp.llama_log_callback
def _mtmd_log(level: int, text: bytes, _user_data) -> None:
    """libmtmd's log (chatty at info: every image it encodes): errors only, to llama-cpp-python's logger."""
    if level >= 4:                    # GGML_LOG_LEVEL_ERROR
        _log.error("%s", text.decode("utf-8", errors="replace").rstrip())


mtmd.mtmd_helper_log_set(_mtmd_log, None)     # also sets mtmd_log_set


class ProjectorError(LoadError):
    """The projector cannot be used with this model."""


def _params(threads: int, use_gpu: bool):
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = use_gpu
    params.print_timings = False
    params.n_threads = threads
    return params


def _open(model, projector: str, threads: int, use_gpu: bool):
    """The mtmd context for `projector` over the loaded text model, or a ProjectorError."""
    ctx = mtmd.mtmd_init_from_file(projector.encode(), model, _params(threads, use_gpu))
    if not ctx:
        raise ProjectorError("the vision projector failed to load: not a projector, or not one for this model "
                             "(its embedding size must match the model's)")
    if not mtmd.mtmd_support_vision(ctx):
        mtmd.mtmd_free(ctx)
        raise ProjectorError("the projector has no vision encoder (an audio-only projector?)")
    if mtmd.mtmd_decode_use_mrope(ctx):
        mtmd.mtmd_free(ctx)
        raise ProjectorError("projectors that need M-RoPE positions (the Qwen2-VL family) are not supported")
    return ctx


@functools.lru_cache(maxsize=64)
def probe(model_path: str, projector: str, stamp: tuple[int, int]) -> None:
    """Loads the pair in a child process first: a projector that would abort it raises ProjectorError here.
    (`stamp`, the projector's size and mtime, keys the cached verdict.)"""
    try:
        done = subprocess.run([sys.executable, "-m", "service.engines.vision", model_path, projector],
                              capture_output=True, text=True, timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        raise ProjectorError(f"the vision projector took over {PROBE_SECONDS} s to load") from None
    if done.returncode != 0:
        said = [line[len(_REASON):] for line in done.stdout.splitlines() if line.startswith(_REASON)]
        raise ProjectorError(said[-1] if said else "the vision projector cannot be used: it crashed the loader "
                             f"(exit {done.returncode}; malformed metadata or tensor shapes)")


def problem(model_path: Path, projector: Path) -> str | None:
    """Why `projector` cannot be used with the model at `model_path` (a probe, as `probe`), or None."""
    stat = projector.stat()
    try:
        probe(str(model_path), str(projector), (stat.st_size, stat.st_mtime_ns))
    except ProjectorError as exc:
        return str(exc)
    return None


def _owned(chunk: Any) -> Any:
    """A copy of an mtmd chunk that lives until the ImageChunk holding it is gone."""
    copy = mtmd.mtmd_input_chunk_copy(chunk)
    holder = _Handle(copy)
    weakref.finalize(holder, mtmd.mtmd_input_chunk_free, copy)
    return holder


class _Handle:
    __slots__ = ("chunk", "__weakref__")

    def __init__(self, chunk: Any):
        self.chunk = chunk


class Projector:
    """A loaded projector for one text model and context."""

    def __init__(self, model, path: str, threads: int, use_gpu: bool):
        self._ctx = _open(model, path, threads, use_gpu)
        self._marker = mtmd.mtmd_default_marker()
        self.non_causal = bool(mtmd.mtmd_decode_use_non_causal(self._ctx, None))
        self.max_image_tokens = 0          # set by the engine: a non-causal image must fit one micro-batch

    def chunks(self, image: Bitmap) -> list[int | ImageChunk]:
        """The image's chunks: its embeddings-to-be, with the tokens of any text the projector wraps it in."""
        buf = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
        bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, buf)
        if not bitmap:
            raise ValueError("the image could not be read")
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            mtmd.mtmd_bitmap_set_id(bitmap, image.digest.hex().encode())
            text = mtmd.mtmd_input_text(self._marker, len(self._marker), False, True)
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise ValueError("the projector could not take the image")
            out: list[int | ImageChunk] = []
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    out.extend(tokens[j] for j in range(n.value))
                elif mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                    if self.max_image_tokens and n > self.max_image_tokens:     # llama.cpp would abort on it
                        raise ValueError(f"the image takes {n} tokens, more than this model's projector can "
                                         f"evaluate at once ({self.max_image_tokens})")
                    out.append(ImageChunk(mtmd.mtmd_input_chunk_get_n_pos(chunk), image.digest, _owned(chunk)))
                else:
                    raise ValueError("the projector made a chunk that is not an image")
            return out
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    def evaluate(self, lctx, chunk: ImageChunk, n_past: int, seq: int, n_batch: int) -> None:
        """Evaluates an image chunk into sequence `seq` from position `n_past` (on the decode thread)."""
        new_n_past = llama_cpp.llama_pos(n_past)
        rc = mtmd.mtmd_helper_eval_chunk_single(self._ctx, lctx, chunk.handle.chunk, n_past, seq, n_batch, False,
                                                ctypes.byref(new_n_past))
        if rc != 0:
            raise RuntimeError(f"evaluating an image failed ({rc})")

    def close(self) -> None:
        if self._ctx:
            mtmd.mtmd_free(self._ctx)
            self._ctx = None


def _child(model_path: str, projector: str) -> int:
    """In the probe's process: loads the text model (mapped, on the CPU), then the projector over it."""
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        print(f"{_REASON}the text model could not be read")
        return 1
    try:
        ctx = _open(model, projector, 1, False)
    except ProjectorError as exc:
        print(f"{_REASON}{exc}")
        return 1
    mtmd.mtmd_free(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
