"""Quantization with llama.cpp's quantizer (llama_model_quantize), in a process of its own.

The quantizer reads a GGUF's tensors as its table says; run apart, a file that makes it fail (or crash) costs
that process only, a create whose client goes away stops it, and the service's memory is left alone. Progress
is the output file's size against the size the target type should give.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path

# What `quantize` accepts (Ollama's list, plus Q4_0), upper-cased, and llama.cpp's file type for each.
TARGETS = {"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q4_K_M": 15, "Q4_K": 15, "Q4_K_S": 14, "Q4_0": 2}
# Source file types (general.file_type) quantization starts from.
SOURCES = {0: "F32", 1: "F16", 32: "BF16"}
# Bits a weight takes, to estimate the output's size.
_BITS = {0: 32.0, 1: 16.0, 32: 16.0, 7: 8.5, 15: 4.85, 14: 4.58, 2: 4.5}
UNSUPPORTED = "unsupported quantization type {} - supported types are F32, F16, BF16, Q8_0, Q4_K_M, Q4_K_S, Q4_0"
NOT_FROM_FLOAT = "quantization is only supported for F16, BF16 and F32 models"
TICK_SECONDS = 0.25


def main() -> None:
    """`python -m service.models.quantize SOURCE TARGET FILE_TYPE THREADS`: the quantizer's process."""
    import ctypes

    import llama_cpp

    source, target, file_type, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = threads
    sys.exit(0 if llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)) == 0 else 1)


async def quantize(source: Path, target: Path, file_type: int, source_type: int,
                   threads: int = 0) -> AsyncGenerator[tuple[int, int], None]:
    """Writes `target`, `source` quantized to `file_type`; yields (bytes done, bytes in all) as it goes.
    RuntimeError if the quantizer fails; cancelled, it is stopped and `target` removed."""
    total = source.stat().st_size
    expected = max(1.0, total * _BITS.get(file_type, 8.0) / _BITS.get(source_type, 16.0))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.models.quantize", str(source), str(target), str(file_type),
        str(threads or os.cpu_count() or 1), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        while process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), TICK_SECONDS)
            except TimeoutError:
                written = target.stat().st_size if target.exists() else 0
                yield min(total - 1, int(total * written / expected)), total
        if process.returncode != 0:
            raise RuntimeError(f"the quantizer failed (exit code {process.returncode})")
        yield total, total
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise


if __name__ == "__main__":
    main()
