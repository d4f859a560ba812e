"""all-minilm (all-MiniLM-L6-v2, converted from its safetensors at pull time): a real embedding model behind
/api/embed, checked against an independent numpy forward pass of the same weights."""
from __future__ import annotations

import math

import httpx
import numpy as np
import ollama
import pytest
from gguf import GGUFReader

from common import names
from service import catalog
from service.settings import ServiceSettings
from service.store import ModelStore

MINILM = "all-minilm"


@pytest.fixture(scope="module")
def minilm(real_models):
    """all-minilm in the test store (pulled into the default store first, as `make setup` does)."""
    default = ModelStore(ServiceSettings().models)
    entry = default.get(names.parse(MINILM)) or catalog.install(default, MINILM)
    store = ModelStore(real_models)
    if store.get(names.parse(MINILM)) is None:
        store.import_file(MINILM, entry.path)
    return entry.path


@pytest.fixture(scope="module")
def client(real, minilm) -> ollama.Client:
    return ollama.Client(host=real.url)


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_related_sentences_are_closer_than_unrelated_ones(client):
    cat, rug, money = client.embed(model=MINILM, input=["The cat sits on the mat", "A cat is sitting on a rug",
                                                         "Quarterly revenue grew by 5 percent"]).embeddings
    assert len(cat) == 384 and abs(np.linalg.norm(cat) - 1) < 1e-5                # normalised, 384 dimensions
    assert cosine(cat, rug) > 0.6 > cosine(cat, money) + 0.3


def test_it_is_an_embedding_model_not_a_generator(client, real):
    shown = client.show(MINILM)
    assert "embedding" in shown.capabilities and "completion" not in shown.capabilities
    assert shown.details.family == "bert" and shown.details.quantization_level == "F16"
    resp = httpx.post(real.url + "/api/generate", json={"model": MINILM, "prompt": "Hi"})
    assert (resp.status_code, resp.json()) == (400, {"error": f'"{MINILM}" does not support generate'})
    resp = httpx.post(real.url + "/api/chat", json={"model": MINILM, "messages": [{"role": "user", "content": "Hi"}]})
    assert resp.status_code == 400 and "does not support chat" in resp.json()["error"]
    openai = httpx.post(real.url + "/v1/embeddings", json={"model": MINILM, "input": ["a", "b"]}).json()
    assert [len(d["embedding"]) for d in openai["data"]] == [384, 384]


# -- an independent computation: BERT in numpy, from the GGUF's own weights ---------------------------------------
def _layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _numpy_embedding(path, ids: list[int]) -> np.ndarray:
    reader = GGUFReader(path)
    w = {t.name: np.asarray(t.data, dtype=np.float64).reshape([int(n) for n in reversed(t.shape)])
         for t in reader.tensors}
    field = lambda key: reader.fields[key].parts[-1][0]
    n_layer, n_head, eps = int(field("bert.block_count")), int(field("bert.attention.head_count")), \
        float(field("bert.attention.layer_norm_epsilon"))
    t = len(ids)
    x = w["token_embd.weight"][ids] + w["position_embd.weight"][:t] + w["token_types.weight"][0]
    x = _layer_norm(x, w["token_embd_norm.weight"], w["token_embd_norm.bias"], eps)
    hidden = x.shape[-1]
    d = hidden // n_head
    lin = lambda v, name: v @ w[f"{name}.weight"].T + w[f"{name}.bias"]
    for i in range(n_layer):
        heads = lambda v: v.reshape(t, n_head, d).transpose(1, 0, 2)
        q, k, v = (heads(lin(x, f"blk.{i}.attn_{n}")) for n in "qkv")
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(t, hidden)
        x = _layer_norm(x + lin(ctx, f"blk.{i}.attn_output"), w[f"blk.{i}.attn_output_norm.weight"],
                        w[f"blk.{i}.attn_output_norm.bias"], eps)
        h = lin(_gelu(lin(x, f"blk.{i}.ffn_up")), f"blk.{i}.ffn_down")
        x = _layer_norm(x + h, w[f"blk.{i}.layer_output_norm.weight"], w[f"blk.{i}.layer_output_norm.bias"], eps)
    pooled = x.mean(0)                                                     # mean pooling, as the model card says
    return pooled / np.linalg.norm(pooled)


def test_vectors_match_an_independent_forward_pass(client, minilm):
    reader = GGUFReader(minilm)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    vocab = {bytes(tokens.parts[i]).decode(): n for n, i in enumerate(tokens.data)}
    words = ["the", "cat", "sat", "on", "the", "mat"]
    ids = [vocab["[CLS]"], *(vocab["\u2581" + w] for w in words), vocab["[SEP]"]]       # whole-word tokens
    (served,) = client.embed(model=MINILM, input=" ".join(words)).embeddings
    assert client.embed(model=MINILM, input=" ".join(words)).prompt_eval_count == len(ids)
    assert cosine(served, _numpy_embedding(minilm, ids)) > 0.999
