"""llama.cpp through llama-cpp-python: what every scheduler over it shares.

Loading a model, its vocabulary (tokens, token text, end-of-generation tokens), a request's sampler chain
(its seed, penalties and grammar), log-probabilities, Ollama's context shift, and `Decoding`, the state of
one request's generation: what it has produced, what text may be sent, and when it ends. The batch engine
(service/engines/batch.py) only decides what to decode when.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from service.engines.base import Finish, LoadOptions, Piece, RequestError, Runner, Sampling, TokenLogprob
from service.engines.detokenizer import Detokenizer

log = logging.getLogger(__name__)
Reason = Literal["stop", "length"]
_backend = threading.Lock()
_backend_ready = False


def init_backend() -> None:
    global _backend_ready
    with _backend:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _load_backends()
            # llama.cpp's log goes through llama-cpp-python's logger: errors only (as Llama(verbose=False)).
            llama_log = logging.getLogger("llama-cpp-python")
            if llama_log.level == logging.NOTSET:
                llama_log.setLevel(logging.ERROR)
            _backend_ready = True


_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator"}


def _lib_dir() -> Path:
    return Path(llama_cpp.llama_cpp._lib._name).parent


def _ggml(name: str) -> ctypes.CDLL:
    """The ggml library `name` ("libggml.so", "libggml-base.so") that libllama itself loaded: a wheel holds its
    versioned names as copies, not links, so opening another copy would give another registry of backends."""
    lib_dir = _lib_dir().resolve()
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            path = Path(line.rstrip("\n").split(maxsplit=5)[-1])
            if path.name.startswith(name) and path.parent.resolve() == lib_dir:
                return ctypes.CDLL(str(path))
    return ctypes.CDLL(str(lib_dir / name))


def _load_backends() -> None:
    """A build whose backends are libraries loaded at run time (GGML_BACKEND_DL: the CUDA image's) has none until
    asked: load those beside libllama. A backend that cannot start here (no driver, no device) is skipped, and
    the engine runs on what is left: the CPU."""
    try:
        ggml = _ggml("libggml.so")
    except OSError:
        return
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if ggml.ggml_backend_reg_count() == 0:
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(_lib_dir()).encode())


def devices() -> list[tuple[str, str]]:
    """The compute devices llama.cpp can use here: (type, description), the CPU included."""
    init_backend()
    try:
        base, ggml = _ggml("libggml-base.so"), _ggml("libggml.so")
    except OSError:
        return []
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in (base.ggml_backend_dev_name, base.ggml_backend_dev_description):
        fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    base.ggml_backend_dev_type.restype, base.ggml_backend_dev_type.argtypes = ctypes.c_int, [ctypes.c_void_p]
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        kind = _DEVICE_TYPES.get(base.ggml_backend_dev_type(dev), "other")
        name = (base.ggml_backend_dev_name(dev) or b"").decode(errors="replace")
        description = (base.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
        found.append((kind, f"{name} ({description})" if description and description != name else name))
    return found


def gpu_backends_unused() -> list[str]:
    """GPU backend libraries this build carries that found no device here (no driver, or no GPU)."""
    carried = {p.name.split("-", 1)[1].removesuffix(".so") for p in _lib_dir().glob("libggml-*.so")}
    gpu = {"cuda", "hip", "vulkan", "metal", "sycl", "musa", "opencl", "cann"} & carried
    names = [d.split(" ")[0].lower() for k, d in devices() if k != "CPU"]      # CUDA0, ROCm0, Vulkan0, GPUOpenCL
    aliases = {"hip": "rocm"}
    return sorted(b for b in gpu if not any(aliases.get(b, b) in n for n in names))


def _has_amx() -> bool:
    """Whether ggml was built with Intel AMX kernels (a native build on an AMX CPU)."""
    try:
        lib = ctypes.CDLL(str(Path(llama_cpp.llama_cpp._lib._name).with_name("libggml-cpu.so")))
        return bool(lib.ggml_cpu_has_amx_int8())
    except (AttributeError, OSError):
        return False


_SYS_ARCH_PRCTL = 158                # x86-64 Linux
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def amx_permitted() -> bool:
    """Whether this process may use AMX tiles: Linux grants them per process when asked (arch_prctl
    ARCH_REQ_XCOMP_PERM for XTILEDATA) and refuses where the CPU, or a hypervisor that hides the tile state, has
    none. Without the grant an AMX instruction is SIGILL."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, ctypes.c_ulong(_XFEATURE_XTILEDATA)) == 0


# ggml's AMX kernels, in the ggml that llama-cpp-python 0.3.36 carries, have known defects: wrong results with
# Q4_0 and Q4_1 weights (llama.cpp PR 16315 fixed an unaligned access, and says results stay wrong) and a
# segfault in ggml_backend_amx_mul_mat with K-quants and several sequences (issue 20824, open).
AMX_DEFECTS = "ggml's AMX kernels give wrong results (llama.cpp PR 16315) and crash (issue 20824)"


def repack_weights(setting: str = "auto", *, built: bool | None = None,
                   permitted: bool | None = None) -> tuple[bool, str]:
    """(whether ggml repacks CPU weights into its "extra" buffer types, why). "on" and "off" force it; "auto"
    repacks unless the build has AMX kernels, which repacking would use: not where this host refuses AMX tiles
    (SIGILL), nor where it grants them (AMX_DEFECTS). Without repacking, weights stay in plain CPU buffers, as
    llama-server's --no-repack."""
    built = _has_amx() if built is None else built
    if setting == "on":
        if built and not (amx_permitted() if permitted is None else permitted):
            log.warning("GENGATE_CPU_REPACK=on with AMX kernels on a host that does not permit AMX tiles: the "
                        "first batch will die with SIGILL")
        return True, "forced on (GENGATE_CPU_REPACK=on)"
    if setting == "off":
        return False, "forced off (GENGATE_CPU_REPACK=off)"
    if not built:
        return True, "this build has no AMX kernels"
    if not (amx_permitted() if permitted is None else permitted):
        return False, "AMX kernels built, but this host does not permit AMX tiles (arch_prctl refused XTILEDATA)"
    return False, f"AMX tiles permitted, but {AMX_DEFECTS}; GENGATE_CPU_REPACK=on forces repacking"


def holding_gil(function):
    """`function` (a llama_cpp binding) called without releasing the GIL.

    ctypes releases the GIL around every foreign call, and each release lets the event loop's
    thread take it, so the decode thread then waits to get it back (up to the 5 ms switch
    interval). For calls of microseconds that wait costs more than the call: they keep the GIL.
    """
    try:
        lib = ctypes.PyDLL(llama_cpp.llama_cpp._lib._name)     # the same loaded library
        held = getattr(lib, function.__name__)
        held.argtypes, held.restype = function.argtypes, function.restype
        return held
    except (AttributeError, OSError):                          # another llama-cpp-python layout
        return function


sample_holding_gil = holding_gil(llama_cpp.llama_sampler_sample)


def out_of_memory(exc: BaseException) -> bool:
    """Whether llama.cpp failed for memory: MemoryError, or its words for it (as Ollama matches them)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "failed to allocate" in text


def load_model(path: str, options: LoadOptions, *, repack: bool = False) -> internals.LlamaModel:
    """The model's weights (`repack`: into ggml's extra CPU buffer types; see repack_weights)."""
    init_backend()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = options.num_gpu
    params.main_gpu = options.main_gpu
    params.use_mmap = options.use_mmap
    params.use_extra_bufts = repack
    return internals.LlamaModel(path_model=path, params=params, verbose=False)


def apply_adapters(model: internals.LlamaModel, ctx: internals.LlamaContext, paths: Sequence[str]) -> None:
    """Applies LoRA adapters (GGUF) to a context, each at scale 1 (freed with the model)."""
    if not paths:
        return
    adapters = []
    for path in paths:
        adapter = llama_cpp.llama_adapter_lora_init(model.model, path.encode())
        if not adapter:
            raise RuntimeError("a LoRA adapter failed to load (not one for this model?)")
        adapters.append(adapter)
    handles = (llama_cpp.llama_adapter_lora_p_ctypes * len(adapters))(*adapters)
    scales = (ctypes.c_float * len(adapters))(*([1.0] * len(adapters)))
    if llama_cpp.llama_set_adapters_lora(ctx.ctx, handles, len(adapters), scales) != 0:
        raise RuntimeError("the LoRA adapters could not be applied")


class Batch:
    """A llama_batch over numpy arrays of `cap` rows (one sequence id a row), so a step fills it without a Python
    loop per field: token, pos, seq and logits (1: keep the row's logits)."""

    def __init__(self, cap: int):
        self.token = np.zeros(cap, np.int32)
        self.pos = np.zeros(cap, np.int32)
        self.seq = np.zeros(cap, np.int32)
        self.logits = np.zeros(cap, np.int8)
        self._nseq = np.ones(cap, np.int32)
        int_p = ctypes.POINTER(ctypes.c_int32)
        self._seq_ptrs = (int_p * cap)(*[ctypes.cast(self.seq.ctypes.data + 4 * i, int_p) for i in range(cap)])
        self._batch = llama_cpp.llama_batch(
            n_tokens=0, token=self.token.ctypes.data_as(int_p), embd=None, pos=self.pos.ctypes.data_as(int_p),
            n_seq_id=self._nseq.ctypes.data_as(int_p), seq_id=self._seq_ptrs,
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)))

    def decode(self, ctx: llama_cpp.llama_context_p, n: int) -> None:
        """Decodes the first `n` rows."""
        self._batch.n_tokens = n
        rc = llama_cpp.llama_decode(ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")


class Vocab:
    """A model's tokens: text to tokens and back, each token's bytes, and which tokens end a generation."""

    def __init__(self, model: internals.LlamaModel):
        self._model = model
        self._vocab = model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._eog: dict[int, bool] = {}

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def piece(self, token: int, special: bool) -> bytes:
        """The token's bytes (special tokens written out when `special`)."""
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            piece = self._pieces[key] = buf.raw[:max(n, 0)]
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t, True) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.piece(token, True).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return eog

    def entry(self, token: int, logprob: float) -> TokenLogprob:
        data = self.piece(token, False)
        return TokenLogprob(data.decode("utf-8", errors="replace"), logprob, data)

    def logprob(self, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
        """The token's log-probability under `logits`, with the `top` most likely alternatives."""
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        alternatives: tuple[TokenLogprob, ...] = ()
        if top:
            best = np.argpartition(-logprobs, top)[:top]
            best = best[np.argsort(-logprobs[best])]
            alternatives = tuple(self.entry(int(t), float(logprobs[t])) for t in best)
        return dataclasses.replace(self.entry(token, float(logprobs[token])), top=alternatives)

    def sampler(self, s: Sampling, n_ctx: int):
        """The request's sampler chain, in llama-cpp-python's order: penalties, grammar, then greedy, or
        top-k, typical, top-p, min-p, temperature and a seeded draw."""
        before, grammar, after = self.sampler_parts(s, n_ctx)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for part in filter(None, (before, grammar, after)):
            llama_cpp.llama_sampler_chain_add(chain, part)
        return chain

    def sampler_parts(self, s: Sampling, n_ctx: int):
        """The chain's three parts, each a sampler: the penalties, the grammar (None without one), the rest."""
        # The penalties keep a ring of the last n tokens: more than the context holds means nothing more.
        last_n = n_ctx if s.repeat_last_n < 0 else min(s.repeat_last_n, n_ctx)
        before = llama_cpp.llama_sampler_init_penalties(self.n_vocab, last_n, s.repeat_penalty, s.frequency_penalty,
                                                        s.presence_penalty)
        grammar = None
        if s.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, s.grammar.encode("utf-8"), b"root")
            if not grammar:             # service.generation.grammar checked it; llama.cpp still has the last word
                llama_cpp.llama_sampler_free(before)
                raise RequestError("invalid JSON schema in format", "format")
        after = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

        def add(sampler) -> None:
            llama_cpp.llama_sampler_chain_add(after, sampler)
        if s.temperature < 0:
            add(llama_cpp.llama_sampler_init_dist(s.seed))
        elif s.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(s.top_k))
            add(llama_cpp.llama_sampler_init_typical(s.typical_p, 1))
            add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(s.temperature))
            add(llama_cpp.llama_sampler_init_dist(s.seed))
        return before, grammar, after


class LlamaRunner(Runner):
    """A runner over a llama.cpp model: its vocabulary answers for its tokens."""

    vocab: Vocab

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self.vocab.tokenize(text, add_bos=add_bos)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.vocab.detokenize(tokens)

    def token_text(self, token: int) -> str:
        return self.vocab.token_text(token)


def shift(memory, seq: int, n_past: int, num_keep: int) -> int:
    """Ollama's context shift: frees half of the sequence's context after its first num_keep tokens;
    returns the tokens left."""
    keep = min(max(num_keep, 0), n_past // 2)
    discard = (n_past - keep) // 2
    llama_cpp.llama_memory_seq_rm(memory, seq, keep, keep + discard)
    llama_cpp.llama_memory_seq_add(memory, seq, keep + discard, n_past, -discard)
    return n_past - discard


class Decoding:
    """One request's generation, token by token: its sampler, the tokens it has produced, the text it may
    send (never a broken UTF-8 character, never a stop sequence), its log-probabilities, and its end."""

    def __init__(self, s: Sampling, vocab: Vocab, n_ctx: int, prompt_len: int, local: bool = True):
        """`local`: the sampler chain is built here (else the request samples elsewhere: a grammar's worker)."""
        self.s = s
        self.vocab = vocab
        self.prompt_len = prompt_len
        self.limit = s.num_predict if s.num_predict >= 0 else 10 * n_ctx
        self.sampler = vocab.sampler(s, n_ctx) if local else None
        # Plain greedy decoding (no grammar, no penalty): the token is the logits' argmax, taken without the
        # sampler chain, which first copies every logit into a candidate array (~40 µs a token for SmolLM2).
        self.greedy = (s.temperature == 0 and s.grammar is None and s.repeat_penalty == 1
                       and s.presence_penalty == 0 and s.frequency_penalty == 0)
        self.detok = Detokenizer(s.stop)
        self.tokens: list[int] = []
        self.pending: list[TokenLogprob] = []
        self.sent = 0                     # tokens accounted for in pieces sent
        self.start = time.perf_counter_ns()
        self.first = 0                    # when the prompt was evaluated

    def prompt_done(self) -> None:
        self.first = time.perf_counter_ns()

    def on_token(self, token: int, logits: Callable[[], np.ndarray]) -> tuple[Piece | None, Reason | None]:
        """Takes a sampled token: the piece of text it completes (if any), and why generation ends (if it
        does): "stop" (end of generation, a stop sequence) or "length" (num_predict)."""
        if self.vocab.is_eog(token):
            return None, "stop"
        self.tokens.append(token)
        if self.s.logprobs:
            self.pending.append(self.vocab.logprob(logits(), token, self.s.top_logprobs))
        text = self.detok.feed(self.vocab.piece(token, False))
        piece = self._piece(text) if text else None
        if self.detok.stopped:
            return piece, "stop"
        if len(self.tokens) >= self.limit:
            return piece, "length"
        return piece, None

    def _piece(self, text: str) -> Piece:
        piece = Piece(text, self.pending, len(self.tokens) - self.sent)
        self.pending, self.sent = [], len(self.tokens)
        return piece

    def finish(self, reason: Reason) -> list[Piece | Finish]:
        """The last piece (text held back until now) and the Finish."""
        end = time.perf_counter_ns()
        first = self.first or self.start          # no prompt evaluated (nothing to generate)
        rest = self.detok.flush()
        out: list[Piece | Finish] = [self._piece(rest)] if rest else []
        out.append(Finish(reason, self.prompt_len, first - self.start, len(self.tokens), end - first, self.pending,
                          self.detok.matched))
        self.pending = []
        return out

    def close(self) -> None:
        if self.sampler is not None:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None


PROBE_SECONDS = 60.0


def problem(path: Path) -> str | None:
    """Why llama.cpp cannot read the model at `path` (its architecture, hyper-parameters and vocabulary, loaded
    without weights in a child process: a file it chokes on costs that process), or None."""
    import subprocess
    import sys
    try:
        done = subprocess.run([sys.executable, "-m", "service.engines.llama", str(path)], capture_output=True,
                              text=True, timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        return "llama.cpp took too long to read the model"
    if done.returncode == 0:
        return None
    return "llama.cpp cannot load the model (an architecture it does not know, or a broken file)"


def _probe(path: str) -> int:
    init_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        return 1
    llama_cpp.llama_model_free(model)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(_probe(sys.argv[1]))
