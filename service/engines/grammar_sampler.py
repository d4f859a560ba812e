"""Sampling under a grammar, in a worker process of the request's own.

llama.cpp's grammar matcher can take unbounded time on one token (a pattern such as `(a?){1000}` keeps a
thousand parse stacks and compares them pairwise for every candidate) and cannot be interrupted. So a request
with a grammar samples in a worker process: its whole sampler chain (penalties, grammar, the seeded draw) lives
there, built exactly as the engine builds it in process, so the same seed gives the same tokens. For each token
the decode thread copies the logits row into memory shared with the worker and goes on with the other
sequences; the request rejoins the batch when its token is back. A token that takes longer than TOKEN_SECONDS,
or a worker that dies (its address-space cap: the grammar's stacks can grow without bound too), ends that
request with an error and kills its worker; no other request waits for it.

A worker loads the model's vocabulary only (no weights). Each model keeps up to `idle` workers ready.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import mmap
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from service import workers
from service.engines.base import RequestError, Sampling

log = logging.getLogger(__name__)

START_SECONDS = 30.0                 # a worker loads llama.cpp and the vocabulary
OPEN_SECONDS = 5.0                   # llama.cpp parses the grammar and builds its first stacks
TOKEN_SECONDS = 5.0                  # one token sampled under the grammar
WORKER_MEMORY_BYTES = 1 << 30        # over what the worker's code and vocabulary take


class GrammarSampler:
    """One request's sampler in its worker (decode-thread side)."""

    def __init__(self, process: subprocess.Popen, buffer: mmap.mmap, n_vocab: int):
        self.process = process
        self._buffer = buffer
        self._view = np.frombuffer(buffer, dtype=np.float32, count=n_vocab)
        self._row_bytes = 4 * n_vocab
        self._out: int = process.stdout.fileno()       # type: ignore[union-attr]
        self._in: int = process.stdin.fileno()         # type: ignore[union-attr]
        self._pending = b""
        self.sent_at = 0.0                             # when the token being sampled was asked for (0: none)

    def fileno(self) -> int:
        return self._out

    def submit(self, logits: ctypes.c_void_p) -> None:
        """Asks for the next token from a logits row (copied at once: the context may overwrite it)."""
        ctypes.memmove(self._view.ctypes.data, logits, self._row_bytes)
        self.sent_at = time.monotonic()
        try:
            os.write(self._in, b"s\n")
        except OSError:
            pass                                       # a dead worker: poll() reports it

    def poll(self) -> int | None:
        """The token, once the worker has sampled it; None while it works. RequestError if the worker died."""
        try:
            data = os.read(self._out, 64)
        except BlockingIOError:
            return None
        if not data:
            raise RequestError("format: sampling under the grammar failed (its worker ran out of memory or died)",
                               "format")
        self._pending += data
        if b"\n" not in self._pending:
            return None
        line, self._pending = self._pending.split(b"\n", 1)
        self.sent_at = 0.0
        return int(line)

    def overdue(self, now: float) -> bool:
        return bool(self.sent_at) and now - self.sent_at > TOKEN_SECONDS

    def logits(self) -> np.ndarray:
        """The logits row of the last token asked for (for log-probabilities)."""
        return self._view

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._view = np.zeros(0, np.float32)
        self._buffer.close()


class GrammarSamplers:
    """The workers of one loaded model: `open` (on the event loop's side) gives a request its sampler, `release`
    (from the decode thread) takes it back."""

    def __init__(self, model_path: str, n_vocab: int, idle: int = 1):
        self._path = model_path
        self._n_vocab = n_vocab
        self._keep = idle
        self._idle: list[GrammarSampler] = []
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0                               # observability: workers started

    def _start(self) -> GrammarSampler:
        """A new worker with the vocabulary loaded (blocking: call it off the event loop)."""
        fd, name = tempfile.mkstemp(prefix="gengate-logits-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            os.ftruncate(fd, 4 * self._n_vocab)
            buffer = mmap.mmap(fd, 4 * self._n_vocab)
            process = subprocess.Popen(
                [sys.executable, "-m", "service.engines.grammar_sampler", self._path, name, str(self._n_vocab),
                 str(WORKER_MEMORY_BYTES)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env={**os.environ, **workers.ENV})
        finally:
            os.close(fd)
        sampler = GrammarSampler(process, buffer, self._n_vocab)
        try:
            reply = _read_line(sampler, START_SECONDS)
        finally:
            os.unlink(name)                            # both sides have it mapped
        if reply != {"ready": True}:
            sampler.kill()
            raise RuntimeError(f"the grammar sampler did not start: {reply}")
        os.set_blocking(sampler.fileno(), False)
        self.started += 1
        return sampler

    def open(self, sampling: Sampling, n_ctx: int) -> GrammarSampler:
        """A sampler for this request (blocking, bounded by START_SECONDS and OPEN_SECONDS: call it off the event
        loop). RequestError when llama.cpp refuses the grammar or takes too long over it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the model is being unloaded")
            sampler = self._idle.pop() if self._idle else None
        if sampler is None:
            sampler = self._start()
        os.set_blocking(sampler.fileno(), True)
        request = {"sampling": dataclasses.asdict(sampling), "n_ctx": n_ctx}
        try:
            os.write(sampler._in, json.dumps(request).encode() + b"\n")
            reply = _read_line(sampler, OPEN_SECONDS)
        except BaseException:
            sampler.kill()
            raise
        if "error" in reply:
            self.release(sampler, reusable=reply.get("reusable", False))
            raise RequestError(reply["error"], "format")
        os.set_blocking(sampler.fileno(), False)
        return sampler

    def release(self, sampler: GrammarSampler, reusable: bool = True) -> None:
        """Takes a request's sampler back: kept for the next request when it is idle and healthy, else killed."""
        with self._lock:
            if reusable and not sampler.sent_at and not self._closed and len(self._idle) < self._keep \
                    and sampler.process.poll() is None:
                self._idle.append(sampler)
                return
        sampler.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sampler in idle:
            sampler.kill()


def _read_line(sampler: GrammarSampler, timeout: float) -> dict[str, Any]:
    """One JSON line from the worker within `timeout` (RequestError past it, and the worker is killed)."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready = select.select([sampler.fileno()], [], [], max(0.0, left))[0] if left > 0 else []
        if not ready:
            sampler.kill()
            raise RequestError(f"format: the grammar took longer than the limit of {timeout:g} s to prepare",
                               "format")
        chunk = os.read(sampler.fileno(), 4096)
        if not chunk:
            sampler.kill()
            raise RequestError("format: the grammar sampler failed (its worker ran out of memory or died)",
                               "format")
        data += chunk
    return json.loads(data)


# -- the worker ---------------------------------------------------------------------------------------------
def main() -> None:
    """`python -m service.engines.grammar_sampler MODEL SHM N_VOCAB MEMORY_BYTES`: one request's sampler at a time.
    A JSON line opens one ({"sampling": ..., "n_ctx": ...} → {"ok": true} or {"error": ...}); then each line
    "s" asks for a token from the logits in SHM, answered with the token's id."""
    import llama_cpp

    from service.engines import llama

    model_path, shm, n_vocab, memory = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    llama.init_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    from llama_cpp import _internals as internals
    model = internals.LlamaModel(path_model=model_path, params=params, verbose=False)
    vocab = llama.Vocab(model)
    with open(shm, "r+b") as f:
        buffer = mmap.mmap(f.fileno(), 4 * n_vocab)
    logits = np.frombuffer(buffer, dtype=np.float32, count=n_vocab)
    candidates = np.zeros(n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    ids = np.arange(n_vocab, dtype=np.int32)
    array = llama_cpp.llama_token_data_array(
        data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size=n_vocab, selected=-1, sorted=False)
    workers.cap_memory(memory)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    parts: tuple = ()          # the request's samplers: penalties, grammar (None once it binds no more), the rest
    lazy, written = False, b""
    for line in sys.stdin:
        if line == "s\n":
            if not parts:
                break
            candidates["id"] = ids
            candidates["logit"] = logits
            candidates["p"] = 0
            array.size, array.selected, array.sorted = n_vocab, -1, False
            for part in parts:
                if part is not None:
                    llama_cpp.llama_sampler_apply(part, ctypes.byref(array))
            token = int(candidates["id"][array.selected])
            for part in parts:
                if part is not None:
                    llama_cpp.llama_sampler_accept(part, token)
            if lazy and parts[1] is not None:
                written += vocab.piece(token, False)
                started = written.lstrip()
                if started and not started.startswith(b"{"):     # text: the grammar binds it no more
                    llama_cpp.llama_sampler_free(parts[1])
                    parts = (parts[0], None, parts[2])
            out.write(f"{token}\n")
            out.flush()
            continue
        for part in parts:
            if part is not None:
                llama_cpp.llama_sampler_free(part)
        parts, written = (), b""
        request = json.loads(line)
        reply: dict[str, Any]
        try:
            sampling = Sampling(**{**request["sampling"], "stop": tuple(request["sampling"]["stop"])})
            parts = vocab.sampler_parts(sampling, request["n_ctx"])
            lazy = sampling.grammar_until_text
            reply = {"ok": True}
        except RequestError as exc:
            reply = {"error": str(exc), "reusable": True}
        except MemoryError:
            reply = {"error": "format: the grammar needs more memory than the limit allows"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
