"""Tiny random-weight GGUF ("llama" architecture) models for fast code-path tests.

``write_tiny_llama(path)`` writes a ~0.5 MB, fully deterministic GGUF file that
llama.cpp / llama-cpp-python loads in milliseconds.  The weights are random
(numpy, seeded), so the generated text is gibberish, but:

* the vocabulary is a real SentencePiece-style ("llama") vocab with the 256
  byte-fallback tokens, so any UTF-8 text (emoji, CJK, ...) tokenizes and
  detokenizes back exactly;
* the end-of-sequence token ``</s>`` (and the other control tokens, plus by
  default the byte-fallback tokens) can never be produced by sampling, so a
  generation runs until ``max_tokens`` / cancellation and always yields
  non-empty, valid UTF-8 text.

How the suppression works: dimension 0 of every token embedding is a positive
constant and no layer writes to that dimension of the residual stream
(row 0 of every ``attn_output`` / ``ffn_down`` matrix is zero).  After the final
RMS norm (all-positive ``output_norm`` weights) dimension 0 of the hidden state is
therefore always strictly positive (~1).  Ordinary tokens have 0 in column 0 of
``output.weight``; suppressed tokens have ``-SUPPRESS_LOGIT`` there and 0
elsewhere, so their logit is about ``-SUPPRESS_LOGIT`` (~ -1000) while ordinary
logits are O(1..10).  This holds for every context and every sampler setting
(temperature, top-k/p, repeat penalties), not just greedy decoding.

Only numpy, gguf (tested with gguf==0.19.0) and the standard library are used.
"""

from __future__ import annotations

import pathlib

import gguf
import numpy as np

__all__ = [
    "write_tiny_llama",
    "TINY_N_EMBD",
    "TINY_N_LAYER",
    "TINY_N_HEAD",
    "TINY_N_HEAD_KV",
    "TINY_N_FF",
    "TINY_VOCAB",
    "TINY_N_VOCAB",
    "TINY_UNK_ID",
    "TINY_BOS_ID",
    "TINY_EOS_ID",
    "TINY_UNK_TEXT",
    "TINY_BOS_TEXT",
    "TINY_EOS_TEXT",
    "TINY_MODEL_NAME",
    "SUPPRESS_LOGIT",
]

# --------------------------------------------------------------------------
# Dimensions
# --------------------------------------------------------------------------
TINY_N_EMBD = 64
TINY_N_LAYER = 2
TINY_N_HEAD = 4
TINY_N_HEAD_KV = 4
TINY_N_FF = 128
TINY_RMS_EPS = 1e-5
TINY_ROPE_FREQ_BASE = 10000.0
TINY_MODEL_NAME = "tiny-llama-random"

# Logit given to tokens that must never be sampled (EOS, BOS, UNK, bytes).
SUPPRESS_LOGIT = 1000.0
# Constant value of the "bias" dimension 0 of every token embedding.
_BIAS_DIM_VALUE = 1.0

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------
TINY_UNK_TEXT = "<unk>"
TINY_BOS_TEXT = "<s>"
TINY_EOS_TEXT = "</s>"
TINY_UNK_ID = 0
TINY_BOS_ID = 1
TINY_EOS_ID = 2

_SPACE = "\u2581"  # "▁", SentencePiece's whitespace marker

_WORDS = """
the be to of and a in that have it for not on with he as you do at this but his
by from they we say her she or an will my one all would there their what so up
out if about who get which go me when make can like time no just him know take
people into year your good some could them see other than then now look only
come its over think also back after use two how our work first well way even new
want because any these give day most us is are was were been has had did said
hello hi hey world sky blue why green red light sun moon water fire air earth
model token test stream cancel story long short yes thank please sorry great
small big little old young happy sad fast slow day night morning evening
cat dog bird fish tree flower house car road city river sea mountain rain snow
wind cloud star space time life love friend family mother father child book word
number question answer answering question hello world python code data server
client request response message chat system user assistant tool function call
""".split()


def _build_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = [TINY_UNK_TEXT, TINY_BOS_TEXT, TINY_EOS_TEXT]
    scores: list[float] = [0.0, 0.0, 0.0]
    types: list[int] = [
        int(gguf.TokenType.UNKNOWN),
        int(gguf.TokenType.CONTROL),
        int(gguf.TokenType.CONTROL),
    ]
    # 256 byte-fallback tokens, ids 3..258 (same layout as the Llama-2 vocab).
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(int(gguf.TokenType.BYTE))

    pieces: list[str] = [_SPACE]
    # Every printable ASCII character except the space (which SPM maps to "▁").
    pieces += [chr(c) for c in range(0x21, 0x7F)]
    # "▁word" / "▁Word" and all of their prefixes, so that SPM's pairwise merges
    # can build the full word left-to-right.
    # Lowercase words without the "▁" too (text at the very start of a prompt
    # has no space prefix, see add_space_prefix below).
    for w in dict.fromkeys(_WORDS):
        for full in (_SPACE + w, _SPACE + w.capitalize(), w):
            for end in range(2, len(full) + 1):
                pieces.append(full[:end])
    pieces = list(dict.fromkeys(pieces))  # dedupe, keep order

    for i, p in enumerate(pieces):
        tokens.append(p)
        # Llama-style scores (higher = merged earlier); must be python floats
        # for gguf's array type inference (FLOAT32).
        scores.append(float(-i))
        types.append(int(gguf.TokenType.NORMAL))
    return tokens, scores, types


TINY_VOCAB, _SCORES, _TOKEN_TYPES = _build_vocab()
TINY_N_VOCAB = len(TINY_VOCAB)


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------
def _add_extra_kv(writer: gguf.GGUFWriter, key: str, value: object) -> None:
    if isinstance(value, bool):  # before int: bool is an int subclass
        writer.add_bool(key, value)
    elif isinstance(value, int):
        if -(2**31) <= value < 2**31:
            writer.add_int32(key, value)
        else:
            writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        # GGUFWriter.add_string silently drops empty strings; use add_key_value.
        writer.add_key_value(key, value, gguf.GGUFValueType.STRING)
    else:
        raise TypeError(f"unsupported metadata value for {key!r}: {type(value).__name__}")


def write_tiny_llama(
    path: str | pathlib.Path,
    *,
    seed: int = 0,
    chat_template: str | None = None,
    n_ctx_train: int = 512,
    extra_metadata: dict | None = None,
    suppress_byte_tokens: bool = True,
    add_space_prefix: bool = False,
    f16: bool = False,
    bf16: bool = False,
) -> pathlib.Path:
    """Write a tiny random-weight llama GGUF model to ``path`` and return the path.

    The file depends only on the arguments (same arguments -> identical bytes).

    ``chat_template`` is stored as ``tokenizer.chat_template``; ``extra_metadata``
    (key -> str/int/bool/float) is written as additional KV pairs (it may
    override the defaults, e.g. ``{"general.name": "foo"}``).

    ``</s>``, ``<s>`` and ``<unk>`` are never sampled.  With
    ``suppress_byte_tokens`` (default) the 256 byte-fallback tokens are never
    sampled either, so all generated text is valid (ASCII) UTF-8 built from the
    ordinary pieces.

    ``f16`` stores the weight matrices as F16 (file type MOSTLY_F16), ``bf16`` as BF16 (MOSTLY_BF16): a model to
    quantize (the default is all F32).

    ``add_space_prefix`` is written as ``tokenizer.ggml.add_space_prefix``.  It
    defaults to False so that ``detokenize(tokenize(text, add_bos=False)) ==
    text`` holds exactly; with True (the Llama-2 behaviour) the tokenizer
    prepends a "▁" and the round trip gains a leading space unless a BOS token
    is present (llama-cpp-python strips one leading space after BOS).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    d, n_ff, n_vocab = TINY_N_EMBD, TINY_N_FF, TINY_N_VOCAB
    head_dim = d // TINY_N_HEAD
    d_kv = head_dim * TINY_N_HEAD_KV

    def mat(n_out: int, n_in: int, gain: float = 1.0) -> np.ndarray:
        # numpy shape (n_out, n_in) == ggml ne (n_in, n_out), as llama.cpp expects.
        return (rng.standard_normal((n_out, n_in)) * (gain / np.sqrt(n_in))).astype(np.float32)

    tensors: list[tuple[str, np.ndarray]] = []

    # Token embeddings: dim 0 is the constant "bias" dimension.
    tok_embd = rng.standard_normal((n_vocab, d)).astype(np.float32)
    tok_embd[:, 0] = _BIAS_DIM_VALUE
    tensors.append(("token_embd.weight", tok_embd))

    for i in range(TINY_N_LAYER):
        attn_out = mat(d, d, 0.5)
        attn_out[0, :] = 0.0  # never write the bias dim of the residual stream
        ffn_down = mat(d, n_ff, 0.5)
        ffn_down[0, :] = 0.0
        tensors += [
            (f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32)),
            (f"blk.{i}.attn_q.weight", mat(d, d)),
            (f"blk.{i}.attn_k.weight", mat(d_kv, d)),
            (f"blk.{i}.attn_v.weight", mat(d_kv, d)),
            (f"blk.{i}.attn_output.weight", attn_out),
            (f"blk.{i}.ffn_norm.weight", np.ones(d, dtype=np.float32)),
            (f"blk.{i}.ffn_gate.weight", mat(n_ff, d)),
            (f"blk.{i}.ffn_down.weight", ffn_down),
            (f"blk.{i}.ffn_up.weight", mat(n_ff, d)),
        ]

    # Final norm: all positive, so the bias dim stays positive after it.
    tensors.append(("output_norm.weight", np.ones(d, dtype=np.float32)))

    output = mat(n_vocab, d, 3.0)  # logits with std ~3 -> non-trivial argmax
    output[:, 0] = 0.0
    suppressed = [TINY_UNK_ID, TINY_BOS_ID, TINY_EOS_ID]
    if suppress_byte_tokens:
        suppressed += list(range(3, 3 + 256))
    output[suppressed, :] = 0.0
    output[suppressed, 0] = -SUPPRESS_LOGIT
    tensors.append(("output.weight", output))

    if f16:
        tensors = [(name, t.astype(np.float16) if t.ndim == 2 else t) for name, t in tensors]

    writer = gguf.GGUFWriter(path, "llama")  # also writes general.architecture
    try:
        writer.add_name(TINY_MODEL_NAME)
        writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.MOSTLY_BF16 if bf16
                                 else gguf.LlamaFileType.ALL_F32))
        writer.add_vocab_size(n_vocab)
        writer.add_context_length(n_ctx_train)
        writer.add_embedding_length(d)
        writer.add_block_count(TINY_N_LAYER)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(TINY_N_HEAD)
        writer.add_head_count_kv(TINY_N_HEAD_KV)
        writer.add_layer_norm_rms_eps(TINY_RMS_EPS)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(TINY_ROPE_FREQ_BASE)

        writer.add_tokenizer_model("llama")  # SentencePiece BPE w/ byte fallback
        writer.add_token_list(TINY_VOCAB)
        writer.add_token_scores(_SCORES)
        writer.add_token_types(_TOKEN_TYPES)
        writer.add_unk_token_id(TINY_UNK_ID)
        writer.add_bos_token_id(TINY_BOS_ID)
        writer.add_eos_token_id(TINY_EOS_ID)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(add_space_prefix)
        if chat_template is not None:
            writer.add_chat_template(chat_template)

        for key, value in (extra_metadata or {}).items():
            _add_extra_kv(writer, key, value)

        for name, arr in tensors:
            if bf16 and arr.ndim == 2:
                bf = gguf.GGMLQuantizationType.BF16
                writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(arr), bf), raw_dtype=bf)
            else:
                writer.add_tensor(name, np.ascontiguousarray(arr))

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


if __name__ == "__main__":  # pragma: no cover - manual helper
    import sys

    out = write_tiny_llama(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf")
    print(out, out.stat().st_size, "bytes,", TINY_N_VOCAB, "tokens")


def write_tiny_lora(path: str | pathlib.Path, *, seed: int = 1, rank: int = 4, alpha: float = 8.0) -> pathlib.Path:
    """A LoRA adapter (GGUF, random weights) for the tiny llama: low-rank updates of every layer's attn_q and
    ffn_up, strong enough to change what greedy decoding picks."""
    path = pathlib.Path(path)
    rng = np.random.default_rng(seed)
    d, n_ff = TINY_N_EMBD, TINY_N_FF
    writer = gguf.GGUFWriter(path, "llama")
    try:
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        for i in range(TINY_N_LAYER):
            for name, n_out, n_in in ((f"blk.{i}.attn_q.weight", d, d), (f"blk.{i}.ffn_up.weight", n_ff, d)):
                # ggml ne: lora_a (n_in, rank), lora_b (rank, n_out); numpy shapes are reversed.
                writer.add_tensor(f"{name}.lora_a", (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float32))
                writer.add_tensor(f"{name}.lora_b", rng.standard_normal((n_out, rank)).astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
