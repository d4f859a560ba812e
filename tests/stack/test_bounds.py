"""What one crafted request may cost, on the real service and gateway: model work waits its turn, templates are
bounded in time and memory (intermediate values included), and a store heals."""
from __future__ import annotations

import concurrent.futures
import os
import time

import httpx
import ollama
import pytest

from service.models import quantize
from service.models.store import UNUSED_BLOB_SECONDS, ModelStore, _BlobWriter
from tests.fake_engine import FakeEngine
from tests.harness import Stack
from tests.tiny_gguf import write_tiny_llama


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


# -- model work -------------------------------------------------------------------------------------------------
@pytest.fixture
def quantizing(tmp_path, monkeypatch):
    """A stack (the scripted engine: quantizing needs no loaded model) that records how many quantizers run."""
    seen = {"now": 0, "most": 0, "runs": 0}
    real = quantize.quantize

    async def counted(*args, **kwargs):
        seen["now"] += 1
        seen["runs"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        try:
            async for step in real(*args, **kwargs):
                yield step
        finally:
            seen["now"] -= 1
    monkeypatch.setattr(quantize, "quantize", counted)
    stack = Stack(tmp_path / "store", FakeEngine(), max_model_jobs_queue=32).start()
    stack.seen = seen
    yield stack
    stack.stop()


def test_sixteen_quantizing_creates_run_one_at_a_time_and_all_complete(quantizing, tmp_path):
    client = ollama.Client(host=quantizing.url)
    blob = client.create_blob(write_tiny_llama(tmp_path / "f16.gguf", f16=True))
    assert client.create(model="f16", files={"m.gguf": blob}).status == "success"

    def create(i: int) -> list[str]:
        return [s.status for s in ollama.Client(host=quantizing.url).create(
            model=f"q{i}", from_="f16", quantize="q8_0", stream=True)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(create, range(16)))
    assert all(steps[-1] == "success" for steps in results)
    assert quantizing.seen == {"now": 0, "most": 1, "runs": 16}                # GENGATE_MODEL_JOBS = 1
    waited = [s for steps in results for s in steps if s.startswith("waiting for")]
    assert waited and all(s.endswith("to finish") for s in waited)              # those behind were told
    assert any(s == "waiting for 1 other model conversion to finish" for s in waited)


def test_past_the_queue_a_quantizing_create_is_a_503(tmp_path):
    stack = Stack(tmp_path / "store", FakeEngine(), max_model_jobs_queue=1).start()
    try:
        client = ollama.Client(host=stack.url)
        blob = client.create_blob(write_tiny_llama(tmp_path / "f16.gguf", f16=True))
        assert client.create(model="f16", files={"m.gguf": blob}).status == "success"
        body = {"model": "q", "from": "f16", "quantize": "q8_0", "stream": False}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda i: httpx.post(stack.url + "/api/create", json={**body, "model": f"q{i}"},
                                                         timeout=60), range(6)))
        codes = sorted(r.status_code for r in replies)
        assert 200 in codes and 503 in codes, codes
        busy = next(r for r in replies if r.status_code == 503)
        assert busy.json() == {"error": "server busy, please try again.  maximum pending model conversions "
                                        "exceeded"}
        assert busy.headers["Retry-After"]
    finally:
        stack.stop()


# -- templates --------------------------------------------------------------------------------------------------
def test_a_go_template_that_doubles_a_value_stops_with_memory_flat(fake):
    """The attack trial's 941-byte template doubled a string 30 times with printf (2.57 GB): the values it makes
    count, not only its output."""
    template = '{{ $a := "' + "a" * 40 + '" }}' + '{{ $a = printf "%s%s" $a $a }}' * 30 + "{{ $a }}"
    before = rss_kib()
    reply = httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": "x", "template": template,
                                                         "stream": False}, timeout=60)
    assert reply.status_code == 400
    assert "a value would exceed 16777216 characters" in reply.json()["error"]
    assert rss_kib() - before < 200_000


def test_a_go_template_that_keeps_copying_a_large_value_is_bounded(fake):
    template = ('{{ $a := "' + "b" * 1000 + '" }}{{ range 14 }}{{ $a = printf "%s%s" $a $a }}{{ end }}'
                "{{ range 200000 }}{{ $x := printf \"%s\" $a }}{{ end }}")
    start = time.monotonic()
    reply = httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": "x", "template": template,
                                                         "stream": False}, timeout=60)
    assert reply.status_code == 400 and "exceed" in reply.json()["error"]
    assert time.monotonic() - start < 10


@pytest.fixture
def jinja(models, tmp_path):
    """A store with models whose own (GGUF) chat templates loop or allocate without bound."""
    store = ModelStore(models)
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}hi"
    wide = "{{ '{:>1073741824}'.format('a') }}"
    store.import_file("jinja-loop", write_tiny_llama(tmp_path / "loop.gguf", chat_template=loops))
    store.import_file("jinja-wide", write_tiny_llama(tmp_path / "wide.gguf", chat_template=wide))
    stack = Stack(models, FakeEngine()).start()
    yield stack
    stack.stop()
    for name in ("jinja-loop", "jinja-wide"):
        from common import names
        store.delete(names.parse(name))


def test_jinja_templates_that_loop_are_stopped_and_the_service_keeps_serving(jinja):
    """Renders that would each pin a thread forever end at the render limit, in workers that are killed. One such
    request delays nobody; six (more than the service renders at once) delay others by the render limit at most,
    and leave the service as it was."""
    chat = {"model": "jinja-loop", "messages": [{"role": "user", "content": "x"}], "stream": False}
    other = {**chat, "model": "tiny-tools"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        loop = pool.submit(httpx.post, jinja.url + "/api/chat", json=chat, timeout=60)
        time.sleep(0.5)
        start = time.monotonic()
        assert httpx.post(jinja.url + "/api/chat", json=other, timeout=60).json()["done"]
        assert time.monotonic() - start < 3
        reply = loop.result()
        assert reply.status_code == 500
        assert reply.json()["error"] == "chat template: rendering took longer than the limit of 5 s"

        loops = [pool.submit(httpx.post, jinja.url + "/api/chat", json=chat, timeout=60) for _ in range(6)]
        time.sleep(0.5)
        start = time.monotonic()
        assert httpx.post(jinja.url + "/api/chat", json=other, timeout=60).json()["done"]
        assert time.monotonic() - start < 5 + 3
        assert [f.result().status_code for f in loops] == [500] * 6
    pids = jinja.service.generation.chat_templates.pids
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids)       # no killed worker kept
    assert httpx.post(jinja.url + "/api/chat", json=other, timeout=60).json()["done"]


def test_a_jinja_template_that_allocates_a_gigabyte_is_stopped_with_the_service_memory_flat(jinja):
    before = rss_kib()
    reply = httpx.post(jinja.url + "/api/chat", json={"model": "jinja-wide", "stream": False,
                                                      "messages": [{"role": "user", "content": "x"}]}, timeout=60)
    assert reply.status_code == 500
    assert reply.json()["error"] == "chat template: rendering needed more memory than the limit of 512 MiB"
    assert rss_kib() - before < 100_000
    ok = httpx.post(jinja.url + "/api/chat", json={"model": "tiny-tools", "stream": False,
                                                   "messages": [{"role": "user", "content": "x"}]}, timeout=60)
    assert ok.status_code == 200


def test_a_client_that_leaves_ends_its_render(jinja):
    """The render's worker is killed when its request goes away: nothing it started runs on."""
    chat = {"model": "jinja-loop", "messages": [{"role": "user", "content": "x"}]}
    pool = jinja.service.generation.chat_templates
    with httpx.Client(timeout=2) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(jinja.url + "/api/chat", json=chat, timeout=1)
    deadline = time.monotonic() + 3
    while pool._workers._busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pool._workers._busy


# -- the store --------------------------------------------------------------------------------------------------
def test_blobs_no_model_uses_are_pruned_after_their_wait_and_never_while_held(tmp_path):
    store = ModelStore(tmp_path)
    weights = write_tiny_llama(tmp_path / "w.gguf")
    kept = store.import_file("kept", weights).digest
    old = time.time() - UNUSED_BLOB_SECONDS - 1
    orphans = []
    for i in range(3):
        with open(tmp_path / f"o{i}", "wb") as f:
            f.write(b"orphan %d" % i)
        with open(tmp_path / f"o{i}", "rb") as f:
            digest = store.write_blob(f)[0]
        os.utime(store.blob_path(digest), (old, old))
        orphans.append(digest)
    with store.hold() as hold:
        hold(orphans[0])
        assert sorted(store.prune()) == sorted(orphans[1:])          # the held one stays
    assert store.prune() == [orphans[0]]
    assert store.has_blob(kept)


def test_heal_removes_only_what_dead_writers_left(tmp_path):
    store = ModelStore(tmp_path)
    live = _BlobWriter(store)                                          # an upload in progress (another process)
    live.feed(b"half")
    dead = tmp_path / "blobs" / ".partial-dead"
    dead.write_bytes(b"left by a killed upload")
    store.heal()
    assert not dead.exists()
    assert os.path.exists(live._file.name)
    live.__exit__(None, None, None)


def test_checking_a_blob_restarts_its_wait(fake, tmp_path):
    store = ModelStore(fake.service.store.root)
    data = tmp_path / "x.bin"
    data.write_bytes(os.urandom(64))
    client = ollama.Client(host=fake.url)
    digest = client.create_blob(data)[7:]
    old = time.time() - UNUSED_BLOB_SECONDS - 1
    os.utime(store.blob_path(digest), (old, old))
    assert httpx.head(f"{fake.url}/api/blobs/sha256:{digest}").status_code == 200
    assert digest not in store.prune()
    assert store.has_blob(digest)
    os.utime(store.blob_path(digest), (old, old))
    assert store.prune() == [digest]


# -- deep input -------------------------------------------------------------------------------------------------
def nested(depth: int) -> dict:
    """A JSON schema object `depth` levels deep."""
    value: dict = {"type": "string"}
    for _ in range(depth - 1):
        value = {"type": "object", "properties": {"a": value}}
    return value


def nested_text(depth: int) -> str:
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


TOOL = {"name": "f", "description": "d"}
DEEP = nested(150)       # JSON depth ~300, as the attack trial's
OLLAMA_ERROR = {"error": "exceeded max depth"}


@pytest.mark.parametrize("path, body", [
    ("/api/chat", {"model": "tiny-tools", "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {**TOOL, "parameters": DEEP}}]}),
    ("/api/chat", {"model": "tiny-tools", "messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": DEEP}}]}]}),
    ("/v1/chat/completions", {"model": "tiny-tools", "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {**TOOL, "parameters": DEEP}}]}),
    ("/v1/chat/completions", {"model": "tiny-tools", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": nested_text(300)}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}),
    ("/v1/responses", {"model": "tiny-tools", "input": "x",
                       "tools": [{"type": "function", **TOOL, "parameters": DEEP}]}),
    ("/v1/responses", {"model": "tiny-tools", "input": [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": nested_text(300)},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}),
    ("/v1/messages", {"model": "tiny-tools", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                      "tools": [{**TOOL, "input_schema": DEEP}]}),
    ("/api/create", {"model": "deep", "from": "tiny", "parameters": {"stop": DEEP}}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "format": DEEP}),
])
def test_deep_input_is_a_400_in_every_dialect(fake, path, body):
    reply = httpx.post(fake.url + path, json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()
    message = error["error"] if isinstance(error.get("error"), str) else error["error"]["message"]
    assert message == "exceeded max depth"


@pytest.mark.parametrize("path, body", [
    ("/api/chat", lambda schema: {"model": "tiny-tools", "messages": [{"role": "user", "content": "x"}],
                                  "tools": [{"type": "function", "function": {**TOOL, "parameters": schema}}]}),
    ("/v1/messages", lambda schema: {"model": "tiny-tools", "max_tokens": 5,
                                     "messages": [{"role": "user", "content": "x"}],
                                     "tools": [{**TOOL, "input_schema": schema}]}),
])
def test_input_at_the_depth_limit_is_served(fake, path, body):
    """The deepest schema a body may carry (32 levels in all) goes through protobuf and is answered."""
    depth = 32 - 4                                                  # the body's own levels above the schema
    schema: dict = {"type": "string"}
    for _ in range((depth - 1) // 2):
        schema = {"type": "object", "properties": {"a": schema}}
    reply = httpx.post(fake.url + path, json=body(schema), timeout=30)
    assert reply.status_code == 200, reply.text


def _field(message, name: str, payload: bytes) -> bytes:
    """One length-delimited field of `message`'s type, in wire format."""
    from google.protobuf.internal import encoder
    number = message.DESCRIPTOR.fields_by_name[name].number
    return encoder._VarintBytes(number << 3 | 2) + encoder._VarintBytes(len(payload)) + payload


def test_a_deep_struct_over_grpc_is_invalid_argument(fake):
    """A gRPC caller can send what protobuf will not parse (the Python client cannot even build it): the service
    answers INVALID_ARGUMENT."""
    import grpc
    from google.protobuf import struct_pb2

    from gengate.v1 import generate_pb2 as pb
    value: dict = {}
    for _ in range(60):
        value = {"a": value}
    struct = struct_pb2.Struct()
    struct.update(value)
    function = pb.ToolFunction(name="f").SerializeToString() + _field(pb.ToolFunction, "parameters",
                                                                       struct.SerializeToString())
    tool = pb.Tool(type="function").SerializeToString() + _field(pb.Tool, "function", function)
    request = pb.ChatRequest(model="tiny-tools", messages=[pb.Message(role="user", content="x")]).SerializeToString()
    request += _field(pb.ChatRequest, "tools", tool)
    channel = grpc.insecure_channel(fake.grpc_target)
    chat = channel.unary_stream("/gengate.v1.GenerateService/Chat", request_serializer=lambda b: b,
                                response_deserializer=pb.ChatResponse.FromString)
    with pytest.raises(grpc.RpcError) as err:
        list(chat(request))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
