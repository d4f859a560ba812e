"""Builds llama.cpp's llama-server and llama-bench from the llama.cpp sources vendored in the
llama-cpp-python sdist that gengate pins, into the ignored folder .cache/ (reused when present)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
VERSION = "0.3.36"                      # the llama-cpp-python version pyproject.toml pins
SDIST = CACHE / "sdist" / f"llama_cpp_python-{VERSION}.tar.gz"
SOURCE = CACHE / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
BUILD = CACHE / f"llama-server-{VERSION}"
BINARY = BUILD / "bin" / "llama-server"
LLAMA_BENCH = BUILD / "bin" / "llama-bench"


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


def ensure_llama_server() -> Path:
    """The llama-server binary (and llama-bench beside it), built once (about 10 minutes on 2 cores)."""
    if BINARY.exists() and LLAMA_BENCH.exists():
        return BINARY
    if not SDIST.exists():
        SDIST.parent.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={VERSION}", "-d", str(SDIST.parent)])
    if not SOURCE.exists():
        with tarfile.open(SDIST) as tar:
            tar.extractall(CACHE, filter="data")
    # The same defaults as llama-cpp-python's CPU build (native CPU features, llamafile sgemm, OpenMP).
    run(["cmake", "-S", str(SOURCE), "-B", str(BUILD), "-G", "Ninja" if shutil.which("ninja") else "Unix Makefiles",
         "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"])
    run(["cmake", "--build", str(BUILD), "--target", "llama-server", "llama-bench", "-j", str(os.cpu_count() or 1)])
    if not (BINARY.exists() and LLAMA_BENCH.exists()):
        raise SystemExit(f"llama-server or llama-bench was not built in {BUILD / 'bin'}")
    return BINARY


if __name__ == "__main__":
    print(ensure_llama_server())
