"""Ollama's model endpoints (tags, show, ps, version, copy, delete) with the official client and gRPC."""
from __future__ import annotations

import time

import grpc
import httpx
import ollama
import pytest

from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc
from tests.conftest import REAL


@pytest.fixture(scope="module")
def client(real) -> ollama.Client:
    return ollama.Client(host=real.url)


def test_tags_lists_installed_models_with_details(client, real):
    models = {m.model: m for m in client.list().models}
    assert {REAL, "tiny:latest", "test-suffix:latest"} <= set(models)
    smol = models[REAL]
    assert smol.size == 98362432 and smol.digest.startswith("b179c952")
    assert (smol.details.format, smol.details.family, smol.details.parameter_size,
            smol.details.quantization_level) == ("gguf", "llama", "135M", "Q4_1")
    assert httpx.head(real.url + "/api/tags").status_code == 200


def test_show_describes_a_model(client):
    shown = client.show(REAL)
    # Tools on every chat model: natively where the template shows them, else in gengate's generic format.
    assert "<|im_start|>" in shown.template and shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["llama.context_length"] == 8192
    assert "tokenizer.ggml.tokens" not in shown.modelinfo
    assert "FROM smollm2:135m" in shown.modelfile
    assert "insert" in client.show("test-suffix").capabilities
    assert "thinking" in client.show("tiny-think").capabilities
    assert httpx.post(client._client.base_url.join("/api/show"), json={"model": "test-system"}).json()["system"] == \
        "You are a helpful assistant."


@pytest.mark.parametrize("body,status,error", [
    ({}, 400, "model is required"), ({"model": "nope"}, 404, "model 'nope' not found"),
    ({"model": "a b"}, 400, "invalid model name")])
def test_show_errors(real, body, status, error):
    resp = httpx.post(real.url + "/api/show", json=body)
    assert (resp.status_code, resp.json()) == (status, {"error": error})


def test_ps_lists_loaded_models_latest_expiry_first(client):
    client.generate(model="tiny", prompt="hi", options={"num_predict": 1}, keep_alive="1h")
    client.generate(model=REAL, prompt="hi", options={"num_predict": 1}, keep_alive="10m")
    running = client.ps().models
    names = [m.model for m in running]
    assert names.index("tiny:latest") < names.index(REAL)
    smol = running[names.index(REAL)]
    assert smol.size > 98362432 and smol.context_length == 4096 and smol.expires_at.timestamp() > time.time() + 500


def test_version(real):
    # The version of Ollama's API gengate implements (clients gate features on it); gengate's own beside it.
    assert httpx.get(real.url + "/api/version").json() == {"version": "0.14.0", "gengate_version": "0.1.0"}


def test_copy_then_delete(client, real):
    client.copy("tiny", "tiny-copy:v1")
    assert "tiny-copy:v1" in {m.model for m in client.list().models}
    assert client.generate(model="tiny-copy:v1", prompt="hi", options={"num_predict": 2}).done
    client.delete("tiny-copy:v1")
    assert "tiny-copy:v1" not in {m.model for m in client.list().models}
    assert client.generate(model="tiny", prompt="hi", options={"num_predict": 2}).done    # the blob stayed
    cases = [("post", "/api/copy", {"source": "nope", "destination": "x"}, 404, 'model "nope" not found'),
             ("post", "/api/copy", {"source": "tiny", "destination": "a b"}, 400, 'destination "a b" is invalid'),
             ("post", "/api/copy", {"source": "-x", "destination": "y"}, 400, 'source "-x" is invalid'),
             ("delete", "/api/delete", {"model": "nope"}, 404, "model 'nope' not found"),
             ("delete", "/api/delete", {"model": "a b"}, 400, 'name "a b" is invalid')]
    for method, path, body, status, error in cases:
        resp = httpx.request(method.upper(), real.url + path, json=body)
        assert (resp.status_code, resp.json()) == (status, {"error": error}), path


def test_model_service_over_grpc(real):
    stub = mpb_grpc.ModelServiceStub(grpc.insecure_channel(real.grpc_target))
    assert REAL in {m.name for m in stub.ListModels(mpb.ListModelsRequest()).models}
    assert stub.ShowModel(mpb.ShowModelRequest(model=REAL)).details.family == "llama"
    version = stub.GetVersion(mpb.GetVersionRequest())
    assert (version.version, version.gengate_version) == ("0.14.0", "0.1.0")     # Ollama's API version, and ours
    with pytest.raises(grpc.RpcError) as err:
        stub.ShowModel(mpb.ShowModelRequest(model="nope"))
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.NOT_FOUND, "model 'nope' not found")


def test_show_prefers_model_over_an_empty_name_and_never_leaks_paths(real, models, tmp_path):
    from common import names
    from service.models.store import ModelStore
    from tests.tiny_gguf import write_tiny_llama
    assert httpx.post(real.url + "/api/show", json={"model": "tiny", "name": ""}).status_code == 200
    assert httpx.post(real.url + "/api/show", json={"name": "tiny"}).status_code == 200
    store = ModelStore(models)
    ghost = store.import_file("ghost", write_tiny_llama(tmp_path / "ghost.gguf", seed=9))
    ghost.path.unlink()                                   # the manifest names a blob that is gone
    try:
        for method, path in (("POST", "/api/show"), ("DELETE", "/api/delete")):
            resp = httpx.request(method, real.url + path, json={"model": "ghost"})
            assert (resp.status_code, resp.json()) == (404, {"error": "model 'ghost' not found"})
        tags = httpx.get(real.url + "/api/tags")
        assert tags.status_code == 200 and "ghost" not in {m["name"] for m in tags.json()["models"]}
    finally:
        store.delete(names.parse("ghost"))


def test_copy_on_a_read_only_store_is_a_clear_400(client, real, monkeypatch):
    """A read-only image or volume (deploy/k8s: readOnlyRootFilesystem) refuses copy and delete plainly."""
    import errno
    import os

    from service.models import store

    def read_only(*args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(store.os, "replace", read_only)
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("tiny", "tiny-copy")
    assert (err.value.status_code, err.value.error) == (400, "the model store is read-only")
    with pytest.raises(grpc.RpcError) as err:
        mpb_grpc.ModelServiceStub(grpc.insecure_channel(real.grpc_target)).DeleteModel(
            mpb.DeleteModelRequest(model="tiny"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    monkeypatch.undo()
    assert "tiny-copy:latest" not in {m.model for m in client.list().models}
    assert "tiny:latest" in {m.model for m in client.list().models}
