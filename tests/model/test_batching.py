"""The batched engine on the real SmolLM2: results do not depend on what else is decoding.

No timing here: speed lives in `make bench`. What is checked is behaviour. In the batch-invariant
layout (GENGATE_BATCH_INVARIANT), requests decoded together (and joining between steps, and reusing
cached prompt prefixes) give exactly the text, tokens and log-probabilities they give alone. The
default layout is the fastest measured: on a CPU it is the same layout, so the same holds; with a
GPU (flash attention on) a request alone is reproducible and concurrency may change the last bits.
A cancelled request gives its sequence back at once, during prefill too; the admission queue
rejects and recovers.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import json
import socket
import time

import httpx
import llama_cpp
import pytest

from gengate.v1 import generate_pb2 as pb
from service.engines.base import Sampling
from service.engines.batch import BatchEngine, chunk_end
from tests.conftest import REAL
from tests.harness import Stack
from tests.stack.test_observability import value

BUSY = "server busy, please try again.  maximum pending requests exceeded"
SYSTEM = ("You are a meticulous assistant. You answer questions about science, history and literature with "
          "care, give one example for each claim, and keep a friendly tone. ")

# Requests of different shapes: chat and raw prompts of different lengths (one longer than a prefill chunk),
# greedy and seeded sampling, a stop string, a JSON grammar, log-probabilities.
MIX = [
    {"prompt": "Why is the sky blue?", "options": {"temperature": 0, "num_predict": 24}},
    {"prompt": "1, 2, 3, 4, 5, 6,", "raw": True, "options": {"temperature": 0, "num_predict": 24}},
    {"prompt": "Write a poem about the sea.", "options": {"seed": 11, "temperature": 0.9, "num_predict": 24}},
    {"prompt": "Tell me about the Roman Empire. " * 12, "options": {"temperature": 0, "num_predict": 24}},
    {"prompt": "Describe a cat as a JSON object with name and color.", "format": "json",
     "options": {"temperature": 0, "num_predict": 60}},
    {"prompt": "List three fruits.", "options": {"temperature": 0, "num_predict": 24, "stop": ["1."]}},
    {"prompt": "Name a planet.", "logprobs": True, "top_logprobs": 3,
     "options": {"temperature": 0, "num_predict": 12}},
    {"prompt": "Tell me a story.", "options": {"seed": 5, "temperature": 0.7, "top_k": 20, "repeat_penalty": 1.2,
                                               "num_predict": 24}},
]


@pytest.fixture(scope="module")
def batch(real_models):
    # Fewer sequences than requests: some wait, then join running batches between steps.
    stack = Stack(real_models, BatchEngine(num_parallel=4, invariant=True), num_parallel=8, max_queue=16).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def fast(real_models):
    """The default layout, as GENGATE_BATCH_INVARIANT=false serves."""
    stack = Stack(real_models, BatchEngine(num_parallel=4), num_parallel=8, max_queue=16).start()
    yield stack
    stack.stop()


def generate(stack: Stack, body: dict) -> dict:
    reply = httpx.post(stack.url + "/api/generate", timeout=300, json={"model": REAL, "stream": False, **body})
    assert reply.status_code == 200, reply.text
    return reply.json()


def result(reply: dict) -> tuple:
    return reply["response"], reply["done_reason"], reply["eval_count"], reply.get("context"), reply.get("logprobs")


def runner_of(stack: Stack):
    (model,) = [m for m in stack.service.pool.loaded() if m.entry.name.short == REAL]
    return model.runner


def wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert predicate()


def test_chunks_never_hold_a_single_token():
    for size in (3, 4, 7, 128):
        for start in range(0, 5):
            for end in range(start + 2, start + 3 * size):
                a, cuts = start, []
                while a < end:
                    b = chunk_end(a, end, size)
                    cuts.append(b - a)
                    a = b
                assert a == end and all(2 <= n <= size for n in cuts), (size, start, end, cuts)


def test_concurrent_requests_give_the_texts_they_give_alone(batch):
    alone = [result(generate(batch, body)) for body in MIX]
    runner = runner_of(batch)
    steps, decoded = runner.stats.steps, runner.stats.sampled
    with cf.ThreadPoolExecutor(len(MIX)) as pool:
        together = list(pool.map(lambda body: result(generate(batch, body)), MIX))
    assert together == alone
    assert runner.stats.steps - steps < runner.stats.sampled - decoded            # tokens were decoded in shared steps
    registry = batch.service.metrics.registry                           # the counts are the engine's metrics
    assert value(registry, "gengate_engine_tokens_sampled_total") == runner.stats.sampled
    assert value(registry, "gengate_engine_decode_steps_total") == runner.stats.steps
    json.loads(alone[4][0])                                            # the grammar held under batching
    assert alone[5][1] == "stop" and "1." not in alone[5][0]
    assert len(alone[6][4]) == 12 and all(len(e["top_logprobs"]) == 3 for e in alone[6][4])


def test_a_reused_prompt_prefix_gives_the_same_text(batch):
    runner = runner_of(batch)
    def ask(q):
        return {"system": SYSTEM + "Session 7.", "prompt": q, "options": {"temperature": 0, "num_predict": 24}}
    cold = result(generate(batch, ask("Who wrote Hamlet?")))             # first time this system prompt is seen
    reused = runner.stats.cached_tokens
    generate(batch, ask("What is photosynthesis?"))                      # shares the system prompt
    assert runner.stats.cached_tokens - reused > 30
    reused = runner.stats.cached_tokens
    assert result(generate(batch, ask("Who wrote Hamlet?"))) == cold     # the whole prompt but two tokens reused
    assert runner.stats.cached_tokens > reused
    # A conversation: the next turn reuses the previous turn's prompt.
    turn = {"prompt": "My name is Ada. What is a prime number?", "options": {"temperature": 0, "num_predict": 24}}
    first = generate(batch, turn)
    follow = {"prompt": "And what is my name?", "context": first["context"],
              "options": {"temperature": 0, "num_predict": 24}}
    reused = runner.stats.cached_tokens
    warm = result(generate(batch, follow))
    assert runner.stats.cached_tokens - reused >= first["prompt_eval_count"] - 2
    # The same turn on a fresh sequence (every cache emptied) gives the same text.
    batch.run(_forget(runner))
    assert result(generate(batch, follow)) == warm


async def _forget(runner) -> None:
    """Empties every sequence's cache (the runner is idle)."""
    def clear() -> None:
        llama_cpp.llama_memory_clear(runner._mem, True)
        runner._cached = [[] for _ in range(runner.n_seq)]
    with runner._cond:                      # the decode thread waits on this condition while idle
        clear()


def test_the_default_layout_is_reproducible_alone_and_serves_concurrent_requests(fast):
    """Alone, a request gives the same result every time (also with its prompt prefix cached). On a CPU the
    default layout is the invariant one, so concurrency changes nothing either; with flash attention on a GPU
    logits may differ in the last bits beside others (llama.cpp promises nothing there)."""
    alone = [result(generate(fast, body)) for body in MIX]
    runner = runner_of(fast)
    assert not runner._invariant
    assert [result(generate(fast, body)) for body in MIX] == alone          # again, the prefixes now cached
    steps, decoded = runner.stats.steps, runner.stats.sampled
    with cf.ThreadPoolExecutor(len(MIX)) as pool:
        together = list(pool.map(lambda body: result(generate(fast, body)), MIX))
    assert runner.stats.steps - steps < runner.stats.sampled - decoded                 # decoded in shared steps
    json.loads(together[4][0])                                             # the grammar holds under batching
    assert together[5][1] == "stop" and "1." not in together[5][0]
    assert [len(t[4] or ()) for t in together] == [len(a[4] or ()) for a in alone]
    if not llama_cpp.llama_supports_gpu_offload():
        assert together == alone


def test_a_cancelled_request_frees_its_sequence_at_once(batch):
    runner = runner_of(batch)
    body = json.dumps({"model": REAL, "prompt": "1, 2, 3, 4, 5, 6,", "raw": True,
                       "options": {"temperature": 0, "num_predict": 3000}}).encode()
    with socket.create_connection(("127.0.0.1", batch.http_port)) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"\n{") < 3:
            received += sock.recv(4096)
        assert runner.active == 1
    wait_until(lambda: runner.active == 0)
    assert runner._free == set(range(runner.n_seq))
    memory = llama_cpp.llama_get_memory(runner._ctx.ctx)
    # Only prompts' KV is left (a reusable cache); every generated token's cell is free.
    assert [llama_cpp.llama_memory_seq_pos_max(memory, s) + 1 for s in range(runner.n_seq)] == \
        [len(cached) for cached in runner._cached]
    assert generate(batch, MIX[1])["eval_count"] == MIX[1]["options"]["num_predict"]


def test_cancelling_during_prefill_stops_between_chunks(batch):
    runner = runner_of(batch)
    prompt = runner.tokenize("The quick brown fox jumps over the lazy dog. " * 300, add_bos=True)
    assert len(prompt) > 20 * runner._chunk

    async def cancel_mid_prompt() -> int:
        chunks = runner.stats.prefill_chunks
        stream = runner.generate(prompt, Sampling(seed=1, temperature=0, num_predict=8))
        task = asyncio.ensure_future(stream.__anext__())
        while runner.stats.prefill_chunks - chunks < 2:
            await asyncio.sleep(0.001)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stream.aclose()
        return runner.stats.prefill_chunks - chunks

    done = batch.run(cancel_mid_prompt())
    assert runner.active == 0 and runner._free == set(range(runner.n_seq))
    assert done < len(prompt) // runner._chunk                         # it stopped before the prompt's end


def test_queue_limit_rejects_then_recovers(real_models):
    stack = Stack(real_models, BatchEngine(num_parallel=2), num_parallel=2, max_queue=1).start()
    try:
        admission = stack.service.generation._admission
        stub = stack.stub()
        long = pb.GenerateRequest(model=REAL, prompt="1, 2, 3, 4, 5, 6,", raw=True,
                                  options=pb.Options(temperature=0, num_predict=3000))
        calls = []
        for _ in range(2):                                               # two run ...
            calls.append(stub.Generate(long))
            next(calls[-1])
        calls.append(stub.Generate(long))                                # ... one waits
        wait_until(lambda: admission.running == 2 and admission.waiting == 1)
        rejected = httpx.post(stack.url + "/api/generate", timeout=60,
                              json={"model": REAL, "prompt": "hi", "stream": False})
        assert (rejected.status_code, rejected.json()) == (503, {"error": BUSY})
        for call in calls:
            call.cancel()
        runner = runner_of(stack)
        wait_until(lambda: admission.running == 0 and admission.waiting == 0 and runner.active == 0)
        assert runner._free == {0, 1}
        reply = generate(stack, {"prompt": "Name a planet.", "options": {"temperature": 0, "num_predict": 4}})
        assert reply["eval_count"] == 4
    finally:
        stack.stop()


def test_greedy_without_the_sampler_chain_picks_what_the_chain_picks(batch):
    """Plain greedy takes the logits' argmax directly; top_k 1 through the whole chain must agree."""
    body = {"prompt": "Why is the sky blue?", "options": {"temperature": 0, "num_predict": 32}}
    chain = {"prompt": "Why is the sky blue?", "options": {"temperature": 0.7, "top_k": 1, "seed": 3,
                                                           "num_predict": 32}}
    assert generate(batch, body)["response"] == generate(batch, chain)["response"]
