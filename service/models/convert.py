"""Hugging Face checkpoints to GGUF, without torch: what a catalog model shipped as safetensors becomes.

`bert` converts a BERT sentence-transformers checkpoint (all-MiniLM-L6-v2) as llama.cpp's own converter
(convert_hf_to_gguf.py, BertModel, --outtype f16) does, with only gguf, safetensors and numpy:
  * tensor names come from gguf's BERT tensor map; pooler.* and position_ids are dropped;
  * 2-D weights are F16, except position_embd/token_types (F32, as upstream); 1-D tensors are F32;
  * the WordPiece vocabulary is rewritten to llama.cpp's "phantom space" form: "##x" -> "x",
    word-start "x" -> "\u2581x", special (CONTROL) tokens unchanged;
  * special ids and add_bos / add_eos / add_sep follow gguf.SpecialVocab for a "[CLS] $A [SEP]" template;
    the pooling type comes from the sentence-transformers Pooling module;
  * the checkpoint's LICENSE text goes under service.models.gguf.LICENSE_TEXT (general.license is only its SPDX id).
Checked against the upstream converter: the same 101 tensors byte for byte, the same bert.* and tokenizer.*
keys. The output is deterministic (same input files, same gguf version: a byte-identical GGUF), which is what
lets the catalog pin its SHA-256.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

from service.models.gguf import LICENSE_TEXT

# tensors llama.cpp's BertModel converter skips (embeddings-only use)
_SKIP = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
# 2-D tensors upstream keeps in F32 even for --outtype f16
_KEEP_F32 = (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _pooling_type(src: Path) -> gguf.PoolingType | None:
    for mod in _json(src / "modules.json") or []:
        if mod["type"].endswith("Pooling"):
            cfg = _json(src / mod["path"] / "config.json")
            if cfg.get("pooling_mode_mean_tokens"):
                return gguf.PoolingType.MEAN
            if cfg.get("pooling_mode_cls_token"):
                return gguf.PoolingType.CLS
            if cfg.get("pooling_mode_lasttoken"):
                return gguf.PoolingType.LAST
            raise NotImplementedError(f"unsupported pooling config: {cfg}")
    return None


def _vocab(tok_json: dict, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token list in llama.cpp's phantom-space form plus gguf token types."""
    model = tok_json["model"]
    if model.get("type") != "WordPiece":
        raise ValueError(f"expected a WordPiece tokenizer, got {model.get('type')!r}")
    prefix = model.get("continuing_subword_prefix", "##")
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    by_id = {i: t for t, i in model["vocab"].items()}
    by_id.update({t["id"]: c for c, t in added.items()})
    if max(by_id) >= n_vocab:
        raise ValueError("tokenizer has ids beyond config vocab_size")
    tokens, types = [], []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif tok in added and added[tok].get("special"):
            tokens.append(tok)  # CONTROL tokens keep their text
            types.append(gguf.TokenType.CONTROL)
        else:
            user = tok in added
            tokens.append(tok[len(prefix):] if tok.startswith(prefix) else "\u2581" + tok)
            types.append(gguf.TokenType.USER_DEFINED if user else gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _special_tokens(src: Path, tok_json: dict) -> tuple[dict[str, int], dict[str, bool]]:
    """Special token ids and add_* flags, as gguf.SpecialVocab derives them for BERT."""
    cfg = _json(src / "tokenizer_config.json") | _json(src / "special_tokens_map.json")
    text = {k[:-6]: (v["content"] if isinstance(v, dict) else v) for k, v in cfg.items() if k.endswith("_token") and v}
    text.setdefault("bos", text.get("cls"))  # BERT: bos := [CLS], eos := [SEP]
    text.setdefault("eos", text.get("sep"))
    vocab = tok_json["model"]["vocab"] | {t["content"]: t["id"] for t in tok_json.get("added_tokens", [])}
    ids = {k: vocab[text[k]] for k in ("bos", "eos", "unk", "sep", "pad", "mask") if text.get(k) in vocab}
    single = [next(iter(x.values()))["id"] for x in (tok_json.get("post_processor") or {}).get("single", [])]
    add = {"bos": bool(single) and single[0] == text.get("bos"),
           "eos": bool(single) and single[-1] == text.get("eos"),
           "sep": False}  # "[CLS] A [SEP] B [SEP]": the pair separator is the eos token
    return ids, add


def bert(src_dir: Path, out: Path, name: str | None = None, license_id: str | None = "apache-2.0") -> None:
    """Write OUT (F16 GGUF, arch "bert") from the HF/sentence-transformers checkpoint in SRC_DIR."""
    src_dir, out = Path(src_dir), Path(out)
    hp = _json(src_dir / "config.json")
    if hp.get("model_type") != "bert" or hp.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute-position BERT checkpoints are supported")
    tok_json = _json(src_dir / "tokenizer.json")
    n_layer = hp["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    keep_f32 = {gguf.TENSOR_NAMES[t] + ".weight" for t in _KEEP_F32}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # atomic: no half-written OUT on failure
    w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    state = load_file(src_dir / "model.safetensors")
    for hf_name in sorted(state):  # safe_open().keys() order, as upstream iterates
        if hf_name in _SKIP or hf_name.startswith("cls."):
            continue
        key = hf_name.removeprefix("bert.")
        new_name = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"cannot map tensor {hf_name!r}")
        data = state[hf_name]
        f32 = data.ndim <= 1 or new_name.endswith("_norm.weight") or new_name in keep_f32
        w.add_tensor(new_name, np.ascontiguousarray(data.astype(np.float32 if f32 else np.float16)))

    # general + model hyper-parameters (same keys and order as convert_hf_to_gguf.py)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or src_dir.name.split("__")[-1])
    w.add_size_label(gguf.size_label(*w.get_total_parameter_count()))
    if license_id:
        w.add_license(license_id)
    if (licence := src_dir / "LICENSE").is_file():
        w.add_string(LICENSE_TEXT, licence.read_text(encoding="utf-8", errors="replace").strip())
    w.add_block_count(n_layer)
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_layer_norm_eps(hp["layer_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_causal_attention(False)
    if (pooling := _pooling_type(src_dir)) is not None:
        w.add_pooling_type(pooling)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # tokenizer
    tokens, types = _vocab(tok_json, hp["vocab_size"])
    w.add_token_type_count(hp.get("type_vocab_size", 1))
    w.add_tokenizer_model("bert")
    # upstream's pre-tokenizer hash for this vocab resolves to "jina-v2-en"; ignored for WPM vocabs
    w.add_tokenizer_pre("jina-v2-en")
    w.add_token_list(tokens)
    w.add_token_types(types)
    ids, add = _special_tokens(src_dir, tok_json)
    for kind, tok_id in ids.items():  # no GGUF key exists for cls (== bos)
        getattr(w, f"add_{kind}_token_id")(tok_id)
    for kind, flag in add.items():
        getattr(w, f"add_add_{kind}_token")(flag)
    norm = tok_json.get("normalizer") or {}
    if norm.get("type") == "BertNormalizer" and norm.get("lowercase") is not None:
        w.add_bool("tokenizer.ggml.normalizer.lowercase", bool(norm["lowercase"]))
    if norm.get("type") == "BertNormalizer" and norm.get("strip_accents") is not None:
        w.add_bool("tokenizer.ggml.normalizer.strip_accents", bool(norm["strip_accents"]))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)
