"""Image generation on the real diffusion engine (stable-diffusion.cpp in a worker process), with a tiny random-weight
FLUX.2-klein checkpoint written here (tests/tiny_diffusion.py): through the official `ollama` client, raw HTTP,
the gRPC stubs and the `openai` client. Random weights make noise, not pictures; what is checked is the contract:
steps streamed 1..N, a PNG of the asked size, the same seed giving the same bytes, the 400s, cancellation that
ends the worker and frees the slot, text served beside an image job, and the model's life in the store."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import os
import threading
import time
from pathlib import Path

import grpc
import httpx
import ollama
import openai
import pytest
from PIL import Image

from gengate.v1 import generate_pb2 as pb
from service.engines.batch import BatchEngine
from service.models.store import ModelStore
from tests.harness import Stack
from tests.stack.test_observability import value
from tests.tiny_diffusion import write_tiny_flux2
from tests.tiny_gguf import write_tiny_llama

IMAGE = "flux-tiny"
SMALL = {"width": 64, "height": 64, "steps": 4}
BUDGET = 256 * 256                    # the stack's pixel budget
LONG = {"width": 256, "height": 256, "steps": 80}      # several seconds of steps (about 0.08 s each here)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion")
    return {"checkpoint": write_tiny_flux2(root / "flux2-klein-tiny.gguf"),
            "split": write_tiny_flux2(root / "no-vae.gguf", seed=1, vae=root / "vae.safetensors"),
            "vae": root / "vae.safetensors", "root": root}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, files):
    """The real engines (text: the batch engine; images: stable-diffusion.cpp workers) over a store holding the
    tiny llama and, created through the API by the first test that needs it, the tiny diffusion model."""
    root = tmp_path_factory.mktemp("image-store")
    ModelStore(root).import_file("tiny", write_tiny_llama(root / "tiny.gguf"))
    stack = Stack(root, BatchEngine(num_parallel=2), num_parallel=2, max_generated_pixels=BUDGET).start()
    client = ollama.Client(host=stack.url)
    client.create(model=IMAGE, files={files["checkpoint"].name: client.create_blob(files["checkpoint"])})
    yield stack
    stack.stop()


@pytest.fixture
def client(stack) -> ollama.Client:
    return ollama.Client(host=stack.url, timeout=120)


def png(data: bytes | str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data) if isinstance(data, str) else data))


def post(stack, body: dict, path: str = "/api/generate") -> httpx.Response:
    return httpx.post(stack.url + path, json=body, timeout=120)


def runner(stack):
    """The loaded image model's runner (its worker process: worker_pid)."""
    loaded = [m for m in stack.service.models.pool.loaded() if m.entry.kind == "image"]
    return loaded[0].runner if loaded else None


def worker(stack, client) -> int:
    """The image model's worker, alive: a job of one step starts one where an earlier test left none."""
    client.generate(model=IMAGE, prompt="warm", keep_alive="10m", width=64, height=64, steps=1)
    pid = runner(stack).worker_pid
    assert pid is not None and alive(pid)
    return pid


def settled(check, timeout: float = 10) -> bool:
    """Whether `check()` holds within `timeout` seconds (what a request leaves is cleared just after it ends)."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:           # a zombie is gone too
        return stat.read().split(") ")[1][0] != "Z"


# -- the official client ---------------------------------------------------------------------------------------
def test_streams_each_step_then_the_png(client):
    parts = list(client.generate(model=IMAGE, prompt="a red fox", stream=True, options={"seed": 7}, **SMALL))
    steps, last = parts[:-1], parts[-1]
    assert [(p.completed, p.total) for p in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert not any(p.done or p.image for p in steps)
    assert last.done and last.done_reason == "stop" and last.total == 4
    assert last.total_duration >= last.load_duration > 0 and last.eval_duration > 0
    image = png(last.image)
    assert image.format == "PNG" and image.size == (64, 64)


def test_default_size_fits_the_pixel_budget(client):
    """FLUX.2-klein's default is 1024 × 1024 in 4 steps; over this stack's budget, the default square shrinks."""
    parts = list(client.generate(model=IMAGE, prompt="a cat", stream=True))
    assert parts[-1].total == 4 and png(parts[-1].image).size == (256, 256)


def test_size_and_steps_as_asked(client):
    parts = list(client.generate(model=IMAGE, prompt="a cat", stream=True, width=96, height=48, steps=2))
    assert [p.completed for p in parts[:-1]] == [1, 2]
    assert png(parts[-1].image).size == (96, 48)


def test_same_seed_same_bytes_other_seed_other_image(client):
    def image(seed: int) -> bytes:
        reply = client.generate(model=IMAGE, prompt="a lighthouse", options={"seed": seed}, **SMALL)
        return base64.b64decode(reply.image)
    first, again, other = image(11), image(11), image(12)
    assert first == again
    assert first != other
    assert png(first).tobytes() != png(other).tobytes()


def test_not_streaming_is_one_object(stack):
    resp = post(stack, {"model": IMAGE, "prompt": "a boat", "stream": False, **SMALL})
    assert resp.status_code == 200, resp.text
    body = resp.json()                                 # one JSON object, not NDJSON lines
    assert body["done"] is True and body["response"] == "" and png(body["image"]).size == (64, 64)
    assert body["completed"] == body["total"] == 4


def test_streaming_http_is_ndjson_lines(stack):
    with httpx.stream("POST", stack.url + "/api/generate", json={"model": IMAGE, "prompt": "x", **SMALL},
                      timeout=120) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert [line.get("completed") for line in lines] == [1, 2, 3, 4, 4]
    assert "image" in lines[-1] and all("image" not in line for line in lines[:-1])


# -- what is refused ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, error", [
    ({"width": 4097, "height": 64}, 400, "width and height must be <= 4096"),
    ({"width": 64, "height": 5000}, 400, "width and height must be <= 4096"),
    ({"width": 72, "height": 64}, 400, "multiples of 16"),
    ({"width": 272, "height": 272}, 400, f"over the limit of {BUDGET}"),
    ({"steps": 101, "width": 64, "height": 64}, 400, "steps is 101, over the limit of 100"),
    ({"width": -1}, 400, "width must be between 0 and 4096"),
    ({"steps": -2}, 400, "steps must be at least 0"),
    ({"prompt": "x" * 4097}, 400, "prompt is too long for an image model: 4097 characters"),
    ({"prompt": "a red fox\u0000 in snow"}, 400, "prompt contains a NUL character"),
    ({"top_logprobs": 2}, 400, "takes no logprobs"),
    ({"_debug_render_only": True}, 400, "takes no debug_render_only"),
    ({"images": [base64.b64encode(b"x").decode()]}, 400, "takes no images"),
    ({"suffix": "tail"}, 400, "takes no suffix"),
    ({"format": "json"}, 400, "takes no format"),
    ({"think": True}, 400, "takes no think"),
    ({"context": [1, 2]}, 400, "takes no context"),
    ({"template": "{{ .Prompt }}"}, 400, "takes no template"),
    ({"system": "be brief"}, 400, "takes no system"),
])
def test_refused_before_any_work(stack, body, status, error):
    steps = value(stack.service.metrics.registry, "gengate_image_steps_total")
    resp = post(stack, {"model": IMAGE, "prompt": "a cat", **body})
    assert resp.status_code == status and error in resp.json()["error"], resp.text
    assert value(stack.service.metrics.registry, "gengate_image_steps_total") == steps


def test_text_routes_refuse_an_image_model(stack):
    chat = post(stack, {"model": IMAGE, "messages": [{"role": "user", "content": "hi"}]}, "/api/chat")
    assert chat.status_code == 400 and chat.json()["error"] == f'"{IMAGE}" does not support chat'
    embed = post(stack, {"model": IMAGE, "input": "hi"}, "/api/embed")
    assert embed.status_code == 400 and embed.json()["error"] == f'"{IMAGE}" does not support embeddings'
    text = post(stack, {"model": "tiny", "prompt": "hi", "width": 64})
    assert text.status_code == 400 and "does not support image generation" in text.json()["error"]


# -- cancellation --------------------------------------------------------------------------------------------------
def test_client_leaving_ends_the_job_and_frees_the_slot(stack, client):
    before = worker(stack, client)
    with httpx.stream("POST", stack.url + "/api/generate", json={"model": IMAGE, "prompt": "a long job", **LONG},
                      timeout=120) as resp:
        for line in resp.iter_lines():
            if json.loads(line).get("completed") == 2:
                break                                  # leaves mid-job
    deadline = time.monotonic() + 10
    while alive(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(before), "the worker kept running the abandoned job"
    assert settled(lambda: value(stack.service.metrics.registry, "gengate_requests_running") == 0)
    again = client.generate(model=IMAGE, prompt="next", **SMALL)       # a fresh worker takes the next job
    assert png(again.image).size == (64, 64)
    assert runner(stack).worker_pid not in (None, before)


def test_deadline_ends_the_job(stack, client):
    stub = stack.stub()
    before = worker(stack, client)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        for _ in stub.Generate(pb.GenerateRequest(model=IMAGE, prompt="slow", **LONG), timeout=1.5):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 5
    deadline = time.monotonic() + 10
    while alive(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(before)
    replies = list(stub.Generate(pb.GenerateRequest(model=IMAGE, prompt="after", width=64, height=64, steps=1),
                                 timeout=60))
    assert replies[-1].done and png(replies[-1].image).size == (64, 64)


def test_a_worker_that_dies_fails_its_job_only(stack, client):
    pid = worker(stack, client)
    seen: list[dict] = []
    with httpx.stream("POST", stack.url + "/api/generate", json={"model": IMAGE, "prompt": "doomed", **LONG},
                      timeout=120) as resp:
        for line in resp.iter_lines():
            seen.append(json.loads(line))
            if seen[-1].get("completed") == 1:
                os.kill(pid, 9)
    assert "error" in seen[-1] and "image worker died" in seen[-1]["error"]
    assert png(client.generate(model=IMAGE, prompt="fine", **SMALL).image).size == (64, 64)


def test_text_runs_while_an_image_job_is_in_flight(stack, client):
    started, finished = threading.Event(), {}

    def image_job():
        for part in client.generate(model=IMAGE, prompt="busy", stream=True, **LONG):
            if part.completed:
                started.set()
        finished["image"] = time.monotonic()
    with cf.ThreadPoolExecutor(1) as pool:
        job = pool.submit(image_job)
        assert started.wait(60)
        text = ollama.Client(host=stack.url).generate(model="tiny", prompt="hello", options={"num_predict": 4})
        finished["text"] = time.monotonic()
        job.result(120)
    assert text.done and text.eval_count == 4
    assert finished["text"] < finished["image"]


# -- gRPC ------------------------------------------------------------------------------------------------------------
def test_grpc_streams_steps_and_png_bytes(stack):
    replies = list(stack.stub().Generate(pb.GenerateRequest(model=IMAGE, prompt="a tree", width=64, height=32,
                                                            steps=3, options=pb.Options(seed=5)), timeout=60))
    assert [(r.completed, r.total) for r in replies[:-1]] == [(1, 3), (2, 3), (3, 3)]
    final = replies[-1]
    assert final.done and final.done_reason == pb.DONE_REASON_STOP
    assert final.image.startswith(b"\x89PNG") and png(final.image).size == (64, 32)
    again = list(stack.stub().Generate(pb.GenerateRequest(model=IMAGE, prompt="a tree", width=64, height=32,
                                                          steps=3, options=pb.Options(seed=5), stream=False)))
    assert len(again) == 1 and again[0].image == final.image        # the same bytes as over HTTP, seeded
    with pytest.raises(grpc.RpcError) as err:
        list(stack.stub().Generate(pb.GenerateRequest(model=IMAGE, prompt="x", width=4097)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- OpenAI's images API ------------------------------------------------------------------------------------------
def test_openai_images_generate(stack):
    oa = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused")
    result = oa.images.generate(model=IMAGE, prompt="a green hill", size="64x64", response_format="b64_json",
                                extra_body={"seed": 3})
    assert png(result.data[0].b64_json).size == (64, 64) and result.created > 0
    seeded = client_image(stack, seed=3)
    assert base64.b64decode(result.data[0].b64_json) == seeded       # the same request as Ollama's
    for kwargs, param in (({"n": 2}, "n"), ({"response_format": "url"}, "response_format"),
                          ({"size": "big"}, "size")):
        with pytest.raises(openai.BadRequestError) as err:
            oa.images.generate(model=IMAGE, prompt="x", **{"size": "64x64", **kwargs})
        assert err.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as err:
        oa.images.generate(model=IMAGE, prompt="x", size="4097x64")
    assert "width and height must be <= 4096" in err.value.message
    with pytest.raises(openai.NotFoundError):
        oa.images.generate(model="nothing-here", prompt="x")


def client_image(stack, seed: int) -> bytes:
    reply = ollama.Client(host=stack.url).generate(model=IMAGE, prompt="a green hill", width=64, height=64,
                                                   options={"seed": seed})
    return base64.b64decode(reply.image)


# -- the model in the store ---------------------------------------------------------------------------------------
def test_show_tags_ps_keep_alive_delete(stack, client, files):
    client.create(model="flux-copy", files={files["checkpoint"].name: client.create_blob(files["checkpoint"])})
    shown = client.show("flux-copy")
    assert shown.capabilities == ["image"]
    assert shown.details.family == "flux2-klein" and shown.details.format == "gguf"
    assert shown.modelinfo["general.architecture"] == "flux2-klein"
    listed = {m.model: m for m in client.list().models}
    assert "flux-copy:latest" in listed
    assert client.generate(model="flux-copy", prompt="").done_reason == "load"        # an empty prompt loads
    assert "flux-copy:latest" in [m.model for m in client.ps().models]
    pid = next(m.runner.worker_pid for m in stack.service.models.pool.loaded() if m.entry.name.short.startswith("flux-copy"))
    assert value(stack.service.metrics.registry, "gengate_image_worker_memory_bytes") > 1 << 20
    assert client.generate(model="flux-copy", prompt="", keep_alive=0).done_reason == "unload"
    assert "flux-copy:latest" not in [m.model for m in client.ps().models]
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "unloading left the worker running"
    client.delete("flux-copy")
    assert "flux-copy:latest" not in {m.model for m in client.list().models}


def test_separate_vae_file(stack, client, files):
    """A checkpoint without its VAE loads only with the VAE beside it (a file named by its role)."""
    split, vae = files["split"], files["vae"]
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="flux-split", files={split.name: client.create_blob(split)})
    assert err.value.status_code == 400
    client.create(model="flux-split", files={split.name: client.create_blob(split),
                                             "vae.safetensors": client.create_blob(vae)})
    assert png(client.generate(model="flux-split", prompt="x", **SMALL).image).size == (64, 64)
    client.delete("flux-split")


def write_gguf(path, arch: str, tensors) -> Path:
    """A GGUF of these (name, numpy array, ggml type or None) tensors."""
    import gguf
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name, data, raw_dtype in tensors:
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_files_no_engine_can_load_are_refused_at_create(client, files):
    import gguf
    import numpy as np

    junk = files["root"] / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="junk", files={"junk.bin": client.create_blob(junk)})
    assert err.value.status_code == 400 and "not in GGUF format" in err.value.error
    # A GGUF that says it is a model but that llama.cpp cannot load (an architecture it does not know).
    odd = write_gguf(files["root"] / "odd.gguf", "stable-diffusion", [("weight", np.zeros((4, 4), np.float32), None)])
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="odd", files={"odd.gguf": client.create_blob(odd)})
    assert err.value.status_code == 400 and "llama.cpp" in err.value.error
    # A diffusion checkpoint missing a tensor stable-diffusion.cpp needs (a text-encoder projection).
    lost = "text_encoders.llm.model.layers.0.self_attn.q_proj.weight"
    broken = write_gguf(files["root"] / "broken.gguf", "flux2-klein",
                        [(t.name, t.data, t.tensor_type) for t in gguf.GGUFReader(str(files["checkpoint"])).tensors
                         if t.name != lost])
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="broken", files={"broken.gguf": client.create_blob(broken)})
    assert err.value.status_code == 400
    assert "stable-diffusion.cpp cannot load the model: 1 tensor(s) missing" in err.value.error and lost in err.value.error
    assert {"junk:latest", "odd:latest", "broken:latest"}.isdisjoint(m.model for m in client.list().models)


def test_metrics_count_steps_and_label_requests(stack, client):
    reg = stack.service.metrics.registry
    steps = value(reg, "gengate_image_steps_total")
    images = value(reg, "gengate_images_generated_total")
    ok = value(reg, "gengate_requests_total", method="Generate", code="OK", capability="image")
    client.generate(model=IMAGE, prompt="count me", **SMALL)
    assert value(reg, "gengate_image_steps_total") == steps + 4
    assert value(reg, "gengate_images_generated_total") == images + 1
    assert value(reg, "gengate_requests_total", method="Generate", code="OK", capability="image") == ok + 1
    client.generate(model="tiny", prompt="hi", options={"num_predict": 1})
    assert value(reg, "gengate_requests_total", method="Generate", code="OK", capability="completion") >= 1


def test_image_job_defaults_and_limits():
    """The job a request becomes, without a stack: defaults per architecture, a seed, and the limits."""
    from service.errors import GenerateError
    from service.generation import images

    limits = {"max_pixels": 1 << 20, "max_steps": 100, "max_message_bytes": 16 << 20}
    job = images.image_job(pb.GenerateRequest(prompt="p", options=pb.Options(seed=9)), "flux2-klein", **limits)
    assert (job.width, job.height, job.steps, job.seed, job.cfg_scale) == (1024, 1024, 4, 9, 1.0)
    turbo = images.image_job(pb.GenerateRequest(prompt="p"), "sd-turbo", **{**limits, "max_pixels": 100 * 100})
    assert (turbo.width, turbo.height, turbo.steps) == (96, 96, 1) and 0 <= turbo.seed < 2**31
    with pytest.raises(GenerateError) as err:
        images.image_job(pb.GenerateRequest(prompt="p", width=1024, height=1024), "flux2-klein",
                         **{**limits, "max_message_bytes": 1 << 20})
    assert "GENGATE_MAX_MESSAGE_BYTES" in err.value.message and err.value.field == "width"


# -- what an attacker tried ------------------------------------------------------------------------------------------
def test_a_request_cancelled_while_the_worker_restarts_leaves_no_crossed_replies(stack, client):
    """A job is cancelled (its worker killed); the next request is cancelled while the fresh worker loads; the
    request after that must get its own image, not the cancelled one's."""
    stub = stack.stub()
    client.generate(model=IMAGE, prompt="", keep_alive="10m")
    with pytest.raises(grpc.RpcError):
        for _ in stub.Generate(pb.GenerateRequest(model=IMAGE, prompt="long", **LONG), timeout=1.0):
            pass
    for timeout in (0.05, 0.15, 0.3):              # cancelled during the restart: spawn, import, load
        with pytest.raises(grpc.RpcError):
            list(stub.Generate(pb.GenerateRequest(model=IMAGE, prompt="b", width=64, height=64, steps=2,
                                                  options=pb.Options(seed=2)), timeout=timeout))
    mine = client.generate(model=IMAGE, prompt="c", options={"seed": 3}, **SMALL).image
    again = client.generate(model=IMAGE, prompt="c", options={"seed": 3}, **SMALL).image
    other = client.generate(model=IMAGE, prompt="b", options={"seed": 2}, width=64, height=64, steps=2).image
    assert mine == again != other


def test_openai_images_on_a_text_model_is_refused(stack):
    oa = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError) as err:
        oa.images.generate(model="tiny", prompt="x")
    assert "does not support image generation" in err.value.message


def test_zero_size_is_the_default_as_ollama_omits_it(stack, client):
    image = post(stack, {"model": IMAGE, "prompt": "x", "width": 0, "height": 0, "steps": 0, "stream": False})
    assert image.status_code == 200 and png(image.json()["image"]).size == (256, 256)
    text = post(stack, {"model": "tiny", "prompt": "x", "width": 0, "stream": False, "options": {"num_predict": 1}})
    assert text.status_code == 200, text.text                  # omitted, as in Ollama: a text model answers


def test_create_sorts_files_by_what_they_are(client, files):
    from tests.tiny_diffusion import write_safetensors

    text_model = write_tiny_llama(files["root"] / "llm.gguf")      # a text model named like a component
    client.create(model="named-llm", files={"llm.gguf": client.create_blob(text_model)})
    assert client.show("named-llm").capabilities[0] == "completion"
    import numpy as np
    stray = write_safetensors(files["root"] / "notes.safetensors", {"w": np.zeros(4, np.float32)})
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="stray", files={"llm.gguf": client.create_blob(text_model),
                                            "notes.safetensors": client.create_blob(stray)})
    assert err.value.status_code == 400 and "notes.safetensors" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="flux-templated", from_=IMAGE, template="{{ .Prompt }}")
    assert err.value.status_code == 400 and "an image model takes no template" in err.value.error
    client.delete("named-llm")


def test_hostile_headers_are_refused_within_bounds(client, files):
    import struct
    many = b"{" + b",".join(b'"%d":{"data_offsets":[0,0]}' % i for i in range(300_000)) + b"}"
    hostile = files["root"] / "many.safetensors"
    hostile.write_bytes(struct.pack("<Q", len(many)) + many)
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="many", files={"many.safetensors": client.create_blob(hostile)})
    assert err.value.status_code == 400
    import gguf
    import numpy as np
    long_name = write_gguf(files["root"] / "long.gguf", "flux2-klein", [("x" * 300, np.zeros(4, np.float32), None)])
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="long", files={"long.gguf": client.create_blob(long_name)})
    assert err.value.status_code == 400 and "not in GGUF format" in err.value.error
    assert gguf.GGUFReader(str(long_name)).tensors[0].name == "x" * 300


def test_engine_messages_name_no_server_path(stack, client, files):
    import gguf
    lost = "text_encoders.llm.model.norm.weight"
    broken = write_gguf(files["root"] / "no-norm.gguf", "flux2-klein",
                        [(t.name, t.data, t.tensor_type) for t in gguf.GGUFReader(str(files["checkpoint"])).tensors
                         if t.name != lost])
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="no-norm", files={"no-norm.gguf": client.create_blob(broken)})
    assert err.value.status_code == 400 and str(stack.settings.models) not in err.value.error
    assert "/" not in err.value.error.replace("n/a", "")


def test_other_load_options_do_not_reload_the_worker(stack, client):
    client.generate(model=IMAGE, prompt="", keep_alive="10m")
    pid = runner(stack).worker_pid
    client.generate(model=IMAGE, prompt="x", options={"num_batch": 64, "num_ctx": 512, "seed": 1}, **SMALL)
    assert runner(stack).worker_pid == pid


def test_two_image_jobs_do_not_hold_text_back(stack, client):
    """Two image jobs on one model (one runs, one waits for the worker in the admission queue) on a stack of two
    generation slots: a text request still runs at once."""
    running = threading.Event()

    def image_job(prompt: str) -> float:
        for part in client.generate(model=IMAGE, prompt=prompt, stream=True, **LONG):
            if part.completed:
                running.set()
        return time.monotonic()
    reg = stack.service.metrics.registry
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(image_job, "busy")
        assert running.wait(60)
        second = pool.submit(image_job, "queued")
        deadline = time.monotonic() + 10
        while value(reg, "gengate_requests_waiting") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert value(reg, "gengate_requests_waiting") == 1
        text = ollama.Client(host=stack.url).generate(model="tiny", prompt="hi", options={"num_predict": 2})
        text_end = time.monotonic()
        ended = first.result(120)
        second.result(120)
    assert text.done and text_end < ended


def test_stopping_while_an_image_model_loads_leaves_no_worker(tmp_path, files):
    before = set(workers())                      # other stacks' workers

    def new_workers() -> set[int]:
        return set(workers()) - before
    root = tmp_path / "store"
    ModelStore(root).import_file("tiny", write_tiny_llama(root / "tiny.gguf"))
    stack = Stack(root, BatchEngine(num_parallel=1)).start()
    with cf.ThreadPoolExecutor(1) as pool:
        try:
            c = ollama.Client(host=stack.url)
            c.create(model=IMAGE, files={files["checkpoint"].name: c.create_blob(files["checkpoint"])})
            loading = pool.submit(lambda: post(stack, {"model": IMAGE, "prompt": ""}))
            deadline = time.monotonic() + 10
            while not new_workers() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert new_workers(), "no worker was started"
        finally:
            stack.stop()                         # while the model loads
        loading.exception(30)
    deadline = time.monotonic() + 10
    while new_workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not new_workers()


def workers() -> list[int]:
    """The live diffusion workers that are this process's children."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().split(") ")[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmd:
                line = cmd.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"diffusion_worker" in line:
            found.append(int(entry))
    return found


def test_every_role_reaches_the_worker():
    from service.engines.diffusion_worker import COMPONENT_ARGUMENTS
    from service.models import checkpoint
    assert set(checkpoint.ROLES.values()) == set(COMPONENT_ARGUMENTS)
