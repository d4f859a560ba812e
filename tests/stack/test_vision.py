"""Images for vision models (a model with a projector layer), through libmtmd.

On the real engine with the tiny llama and tiny random projectors (tests/tiny_mmproj.py): an "mlp" projector
(16 positions an image, causal) and a "gemma3" one (4 positions in <start_of_image> text, decoded non-causally).
Random weights say nothing of quality; what is checked is that images reach the model (the prompt grows by the
image's positions, logits depend on the pixels and only on them), in the batch engine beside text streams,
with the prompt cache, and under cancellation. On the scripted engine: placement ([img] tags), limits, errors,
and every route that carries images."""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf
import contextlib
import io
import json

import anthropic
import grpc
import httpx
import ollama
import openai
import pytest
from PIL import Image

from gengate.v1 import generate_pb2 as pb
from service.engines.base import Sampling
from service.engines.batch import BatchEngine
from service.generation.images import decode
from tests.fake_engine import IMAGE_TOKENS, FakeEngine
from tests.harness import Stack
from tests.tiny_gguf import write_tiny_llama
from tests.tiny_mmproj import random_png, tiny_mmproj_n_image_tokens, write_tiny_mmproj

A, B = random_png(seed=1), random_png(seed=2)
GREEDY = {"temperature": 0, "num_predict": 8}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encoded(fmt: str, size=(40, 30), seed: int = 3) -> bytes:
    image = Image.frombytes("RGB", size, bytes((i * 37 + seed) % 256 for i in range(size[0] * size[1] * 3)))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def seeing(models):
    """The real batch engine (4 sequences, in the batch-invariant layout, so results can be compared bit for
    bit) over the store with the tiny vision models."""
    stack = Stack(models, BatchEngine(num_parallel=4, invariant=True), num_parallel=8).start()
    yield stack
    stack.stop()


@pytest.mark.parametrize("model", ["tiny-vision", "tiny-vision-g3"])
def test_images_in_the_default_layout(models, model):
    """The default layout (the engine's own choice of flash attention) sees the same way."""
    stack = Stack(models, BatchEngine(num_parallel=2)).start()
    try:
        plain = generate(stack, model=model, prompt="Describe", options=GREEDY).json()
        seen = [generate(stack, model=model, prompt="Describe", images=[b64(image)], options=GREEDY).json()
                for image in (A, A, B)]
        assert seen[0]["prompt_eval_count"] > plain["prompt_eval_count"] + 3
        assert seen[0]["response"] == seen[1]["response"]
    finally:
        stack.stop()


def generate(stack, **body) -> httpx.Response:
    return httpx.post(stack.url + "/api/generate", json={"stream": False, **body}, timeout=120)


def first_logprobs(stack, model: str, images: list[bytes], prompt: str = "Describe") -> list:
    resp = generate(stack, model=model, prompt=prompt, images=[b64(i) for i in images], logprobs=True,
                    top_logprobs=5, options=GREEDY)
    assert resp.status_code == 200, resp.text
    return resp.json()["logprobs"]


def runner_of(stack, name: str):
    (model,) = [m for m in stack.service.pool.loaded() if m.entry.name.short == name]
    return model.runner


# -- the real engine -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,positions", [("tiny-vision", tiny_mmproj_n_image_tokens("mlp")),
                                             ("tiny-vision-g3", tiny_mmproj_n_image_tokens("gemma3"))])
def test_images_reach_the_model(seeing, model, positions):
    client = ollama.Client(host=seeing.url)
    plain = client.generate(model=model, prompt="Describe", options=GREEDY)
    with_a = client.generate(model=model, prompt="Describe", images=[A], options=GREEDY)
    if model == "tiny-vision":
        assert with_a.prompt_eval_count == plain.prompt_eval_count + positions
    else:                                   # the image's positions, and the text mtmd wraps it in
        assert with_a.prompt_eval_count > plain.prompt_eval_count + positions
    two = client.generate(model=model, prompt="Compare [img] with [img]", images=[A, B], options=GREEDY)
    one = client.generate(model=model, prompt="Compare [img] with", images=[A], options=GREEDY)
    assert two.prompt_eval_count - one.prompt_eval_count >= positions
    # The same image: the same logits, bit for bit; another image: other logits.
    same = first_logprobs(seeing, model, [A]), first_logprobs(seeing, model, [A])
    other = first_logprobs(seeing, model, [B])
    assert same[0] == same[1] and same[0] != other
    assert first_logprobs(seeing, model, []) != same[0]


def test_image_formats_and_chat_and_grpc(seeing):
    client = ollama.Client(host=seeing.url)
    png = first_logprobs(seeing, "tiny-vision", [encoded("PNG")])
    for fmt in ("BMP", "WEBP", "GIF"):
        image = encoded(fmt) if fmt != "WEBP" else _webp_lossless()
        resp = generate(seeing, model="tiny-vision", prompt="Describe", images=[b64(image)], options=GREEDY)
        assert resp.status_code == 200, (fmt, resp.text)
    assert first_logprobs(seeing, "tiny-vision", [encoded("BMP")]) == png       # the same pixels, another format
    assert generate(seeing, model="tiny-vision", prompt="Describe", images=[b64(encoded("JPEG"))],
                    options=GREEDY).status_code == 200
    reply = client.chat(model="tiny-vision", options=GREEDY, messages=[
        {"role": "user", "content": "What is in [img]?", "images": [A]}])
    text = client.generate(model="tiny-vision", options=GREEDY, images=[A], raw=True,
                           prompt="<|user|>What is in [img]?\n<|assistant|>")
    assert (reply.message.content, reply.prompt_eval_count) == (text.response, text.prompt_eval_count)
    stub = seeing.stub()
    (over_grpc,) = stub.Generate(pb.GenerateRequest(model="tiny-vision", prompt="Describe", images=[A], stream=False,
                                                    options=pb.Options(temperature=0, num_predict=8)))
    assert over_grpc.response == client.generate(model="tiny-vision", prompt="Describe", images=[A],
                                                 options=GREEDY).response
    (chat,) = stub.Chat(pb.ChatRequest(model="tiny-vision", stream=False, options=pb.Options(temperature=0,
                                                                                             num_predict=8),
                                       messages=[pb.Message(role="user", content="What is in [img]?", images=[A])]))
    assert chat.message.content == reply.message.content


def _webp_lossless() -> bytes:
    image = Image.open(io.BytesIO(encoded("PNG")))
    out = io.BytesIO()
    image.save(out, format="WEBP", lossless=True)
    assert decode(out.getvalue(), "x", 1 << 20).rgb == decode(encoded("PNG"), "x", 1 << 20).rgb
    return out.getvalue()


def test_an_image_request_beside_text_streams_changes_no_text(seeing):
    texts = [{"model": "tiny-vision", "prompt": p, "options": {"temperature": 0, "num_predict": 24}}
             for p in ("Once upon a time", "The sky is", "1, 2, 3,")]
    image = {"model": "tiny-vision-g3", "prompt": "Describe", "images": [b64(A), b64(B)], "options": GREEDY}
    alone = [generate(seeing, **body).json()["response"] for body in texts + [image]]
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda body: generate(seeing, **body).json()["response"], (texts + [image]) * 2))
    assert together == alone * 2


def test_the_prompt_cache_reuses_an_image_only_for_the_same_image(seeing):
    prefix = "You describe pictures carefully and in detail. " * 3 + "[img] What is this?"
    cold = first_logprobs(seeing, "tiny-vision", [A], prompt=prefix)
    runner = runner_of(seeing, "tiny-vision:latest")
    reused = runner.stats.cached_tokens
    assert first_logprobs(seeing, "tiny-vision", [A], prompt=prefix) == cold
    with_image = runner.stats.cached_tokens - reused
    assert with_image > tiny_mmproj_n_image_tokens("mlp")                     # the image's KV came back too
    reused = runner.stats.cached_tokens
    other = first_logprobs(seeing, "tiny-vision", [B], prompt=prefix)    # same text, another image
    # Only the text before the image is reused (the image and all after it are evaluated again).
    assert other != cold and 0 < runner.stats.cached_tokens - reused <= with_image - tiny_mmproj_n_image_tokens("mlp")
    # A cold run of B, on a fresh engine, gives the same: nothing of A's KV was reused for B.
    fresh = Stack(seeing.settings.models, BatchEngine(num_parallel=1, invariant=True)).start()
    try:
        assert first_logprobs(fresh, "tiny-vision", [B], prompt=prefix) == other
    finally:
        fresh.stop()


def test_cancelling_between_image_chunks_frees_the_sequence(seeing):
    generate(seeing, model="tiny-vision", prompt="warm", options={"num_predict": 1})
    runner = runner_of(seeing, "tiny-vision:latest")
    parts, tokens = [], runner.tokenize("<|user|>", add_bos=True)
    from service.engines.base import lay_out
    for seed in range(40):
        parts += tokens + runner.tokenize_image(decode(random_png(seed=seed), "x", 1 << 20))
        tokens = runner.tokenize(" and", add_bos=False)
    prompt, images = lay_out(parts + runner.tokenize(" describe", add_bos=False))

    async def cancel_mid_images() -> int:
        chunks = runner.stats.prefill_chunks
        stream = runner.generate(prompt, Sampling(seed=1, temperature=0, num_predict=8), images)
        task = asyncio.ensure_future(stream.__anext__())
        while runner.stats.prefill_chunks - chunks < 3:
            await asyncio.sleep(0.0005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stream.aclose()
        return runner.stats.prefill_chunks - chunks

    done = seeing.run(cancel_mid_images())
    assert runner.active == 0 and runner._free == set(range(runner.n_seq))
    assert done < 2 * 40                                   # 40 image chunks and 40 text ones: stopped early
    assert generate(seeing, model="tiny-vision", prompt="Describe", images=[b64(A)],
                    options=GREEDY).json()["done"]


def test_create_with_a_projector_and_refuse_a_wrong_one(seeing, tmp_path):
    client = ollama.Client(host=seeing.url)
    model = client.create_blob(write_tiny_llama(tmp_path / "m.gguf"))
    good = client.create_blob(write_tiny_mmproj(tmp_path / "mmproj.gguf"))
    steps = [s.status for s in client.create(model="made-vision", files={"m.gguf": model, "mmproj.gguf": good},
                                             stream=True)]
    assert steps[-1] == "success"
    shown = httpx.post(seeing.url + "/api/show", json={"model": "made-vision"}).json()
    assert "vision" in shown["capabilities"] and shown["projector_info"]["general.architecture"] == "clip"
    listed = {m["model"]: m for m in httpx.get(seeing.url + "/api/tags").json()["models"]}
    assert "vision" in listed["made-vision:latest"]["capabilities"]
    assert generate(seeing, model="made-vision", prompt="Describe", images=[b64(A)], options=GREEDY).json()["done"]
    # A projector for another embedding size, and one whose tensors would abort llama.cpp: 400, nothing created.
    for bad in (write_tiny_mmproj(tmp_path / "narrow.gguf", n_embd_text=32), _aborting_projector(tmp_path)):
        with pytest.raises(ollama.ResponseError) as err:
            client.create(model="bad-vision", files={"m.gguf": model, "p.gguf": client.create_blob(bad)})
        assert err.value.status_code == 400 and "projector" in err.value.error
    assert "bad-vision:latest" not in {m.model for m in client.list().models}
    assert httpx.get(seeing.url + "/readyz").status_code == 200


def _aborting_projector(tmp_path):
    """A gemma3 projector whose input projection has the wrong orientation: clip's warm-up asserts on it."""
    path = write_tiny_mmproj(tmp_path / "abort.gguf", proj_type="gemma3")
    import gguf
    import numpy as np
    reader = gguf.GGUFReader(str(path))
    out = tmp_path / "aborting.gguf"
    writer = gguf.GGUFWriter(out, "clip")
    for field in reader.fields.values():
        if field.name.startswith(("clip.", "general.name", "general.file_type")):
            value = field.contents()
            kind = field.types[0]
            if kind == gguf.GGUFValueType.ARRAY:
                writer.add_array(field.name, value)
            else:
                writer.add_key_value(field.name, value, kind)
    for tensor in reader.tensors:
        data = np.array(tensor.data).reshape([int(n) for n in reversed(tensor.shape)])
        writer.add_tensor(tensor.name, data.T.copy() if tensor.name == "mm.input_projection.weight" else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_a_projector_that_fails_at_load_is_a_500_and_the_service_lives(seeing, models, tmp_path):
    from service.models.store import ModelStore
    store = ModelStore(models)
    tiny = write_tiny_llama(tmp_path / "t.gguf")
    store.import_file("broken-vision", tiny, projector=_aborting_projector(tmp_path))     # bypasses create's check
    resp = generate(seeing, model="broken-vision", prompt="Describe", images=[b64(A)])
    assert resp.status_code == 500
    assert resp.json()["error"].startswith("unable to load model broken-vision:latest: the vision projector")
    assert generate(seeing, model="tiny-vision", prompt="Describe", images=[b64(A)], options=GREEDY).json()["done"]


# -- the scripted engine: placement, limits, errors, routes ------------------------------------------------------
@pytest.fixture(scope="module")
def fake_seeing(models):
    stack = Stack(models, FakeEngine(), max_images=3, max_image_pixels=100 * 100).start()
    yield stack
    stack.stop()


def shown(digest_of: bytes) -> str:
    return f"<image:{decode(digest_of, 'x', 1 << 20).digest.hex()[:8]}>"


def test_placement_as_ollama_places_images(fake_seeing):
    engine = fake_seeing.engine
    resp = generate(fake_seeing, model="tiny-vision", prompt="Describe this image", images=[b64(A)],
                    _debug_render_only=True)
    info = resp.json()["_debug_info"]
    assert info == {"rendered_template": "<|user|>[img-0]Describe this image\n<|assistant|>", "image_count": 1}
    generate(fake_seeing, model="tiny-vision", prompt="compare [img] and [img]", images=[b64(A), b64(B)])
    assert engine.prompts[-1] == f"<|user|>compare {shown(A)} and {shown(B)}\n<|assistant|>"
    generate(fake_seeing, model="tiny-vision", prompt="Describe", images=[b64(A), b64(B)], raw=True)
    assert engine.prompts[-1] == f"{shown(A)}{shown(B)}Describe"
    # Chat: ids count across the conversation; a tag naming no image of the request stays text.
    httpx.post(fake_seeing.url + "/api/chat", timeout=60, json={"model": "tiny-vision", "stream": False, "messages": [
        {"role": "user", "content": "First [img-7]", "images": [b64(A)]},
        {"role": "assistant", "content": "Seen."},
        {"role": "user", "content": "Then [img] please", "images": [b64(B)]}]})
    assert engine.prompts[-1] == (f"<|user|>{shown(A)}First [img-7]\n<|assistant|>Seen.\n"
                                  f"<|user|>Then {shown(B)} please\n<|assistant|>")
    done = generate(fake_seeing, model="tiny-vision", prompt="x", images=[b64(A)]).json()
    assert done["prompt_eval_count"] == len("<|user|>x\n<|assistant|>") + IMAGE_TOKENS


@pytest.mark.parametrize("body,field,message", [
    ({"model": "tiny", "images": ["QUJD"]}, None, '"tiny" does not support images'),
    ({"model": "tiny-vision", "images": [b64(b"not an image")]}, None,
     "invalid image data: unknown format (accepted: PNG, JPEG, WebP, GIF, BMP)"),
    ({"model": "tiny-vision", "images": [b64(A[:60])]}, None, "invalid image data: it could not be decoded"),
    ({"model": "tiny-vision", "images": [b64(encoded("PNG", size=(101, 100)))]}, None,
     "the image is 101x100 pixels, over the limit of 10000 (GENGATE_MAX_IMAGE_PIXELS)"),
    ({"model": "tiny-vision", "images": [b64(A)] * 4}, None, "too many images: 4, the limit is 3"),
    ({"model": "tiny-vision", "images": [b64(encoded("TIFF"))]}, None, "unknown format"),
    ({"model": "tiny-vision", "images": ["%%%"]}, None, "illegal base64 data at input byte 0"),
])
def test_image_errors_are_400s(fake_seeing, body, field, message):
    started = fake_seeing.engine.started
    resp = generate(fake_seeing, prompt="Describe", **body)
    assert resp.status_code == 400 and message in resp.json()["error"], resp.text
    assert fake_seeing.engine.started == started
    if "images" in body and body["images"][0] != "%%%":
        with pytest.raises(grpc.RpcError) as err:
            list(fake_seeing.stub().Generate(pb.GenerateRequest(model=body["model"], prompt="Describe",
                                                                images=[base64.b64decode(i) for i in body["images"]])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_a_prompt_that_ends_with_an_image_or_outgrows_the_context_is_refused(fake_seeing):
    resp = generate(fake_seeing, model="tiny-vision", prompt="", images=[b64(A)])      # Ollama: a load, no image
    assert (resp.status_code, resp.json()["done_reason"]) == (200, "load")
    resp = generate(fake_seeing, model="tiny-vision", prompt="[img]", raw=True, images=[b64(A)])
    assert (resp.status_code, resp.json()["error"]) == (400, "the prompt cannot end with an image: text must "
                                                                "follow it")
    resp = generate(fake_seeing, model="tiny-vision", prompt="x" * 3000, images=[b64(A)])    # n_ctx 2048
    assert (resp.status_code, resp.json()["error"]) == (400, "the input length exceeds the context length")


def test_every_route_carries_images(fake_seeing):
    engine = fake_seeing.engine
    url = "data:image/png;base64," + b64(A)
    oai = openai.OpenAI(base_url=fake_seeing.url + "/v1", api_key="unused", max_retries=0)
    oai.chat.completions.create(model="tiny-vision", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    assert engine.prompts[-1] == f"<|user|>{shown(A)}What is this?\n<|assistant|>"
    oai.responses.create(model="tiny-vision", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "And this?"}, {"type": "input_image", "image_url": url}]}])
    assert engine.prompts[-1] == f"<|user|>{shown(A)}And this?\n<|assistant|>"
    claude = anthropic.Anthropic(base_url=fake_seeing.url, api_key="unused", max_retries=0)
    claude.messages.create(model="tiny-vision", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(B)}},
        {"type": "text", "text": "Describe."}]}])
    assert engine.prompts[-1] == f"<|user|>{shown(B)}Describe.\n<|assistant|>"
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}])
    assert err.value.body["message"] == '"tiny" does not support images'
    shown_model = httpx.post(fake_seeing.url + "/api/show", json={"model": "tiny-vision"}).json()
    assert "vision" in shown_model["capabilities"] and shown_model["projector_info"]["clip.projector_type"] == "mlp"
    assert json.loads(json.dumps(shown_model["projector_info"]))["clip.vision.image_size"] == 32


def test_image_evaluation_is_counted_in_the_prompt_metrics(seeing):
    resp = generate(seeing, model="tiny-vision", prompt="Describe", images=[b64(A)], options=GREEDY).json()
    plain = generate(seeing, model="tiny-vision", prompt="Describe", options=GREEDY).json()
    assert resp["prompt_eval_count"] == plain["prompt_eval_count"] + 16 and resp["prompt_eval_duration"] > 0


def test_a_context_carries_no_image_into_the_next_turn(fake_seeing):
    engine = fake_seeing.engine
    first = generate(fake_seeing, model="tiny-vision", prompt="Look", images=[b64(A)]).json()
    generate(fake_seeing, model="tiny-vision", prompt="And this", images=[b64(B)], context=first["context"])
    assert engine.prompts[-1].count("<image:") == 1 and shown(B) in engine.prompts[-1]
    assert "[img-" not in engine.prompts[-1]


def test_an_image_too_large_for_a_non_causal_projector_is_a_400(seeing):
    generate(seeing, model="tiny-vision-g3", prompt="warm", options={"num_predict": 1})
    projector = runner_of(seeing, "tiny-vision-g3:latest")._projector
    limit, projector.max_image_tokens = projector.max_image_tokens, 2        # as if the image outgrew a batch
    try:
        resp = generate(seeing, model="tiny-vision-g3", prompt="Describe", images=[b64(A)])
        assert resp.status_code == 400 and "more than this model's projector can evaluate at once (2)" in \
            resp.json()["error"]
    finally:
        projector.max_image_tokens = limit
    assert limit == 512
