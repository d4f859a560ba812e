"""Polyglot clients: Node's @grpc/grpc-js (proto loaded at run time with @grpc/proto-loader) against the
gRPC service, and the official `ollama` npm client against the HTTP gateway, on the real model.

The Node programs live in tests/node/ (generate.mjs, ollama.mjs); `npm ci` installs their pinned
dependencies once, into tests/node/node_modules, the first time these tests run."""
from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from common import names
from gengate.v1 import generate_pb2 as pb
from service.models.store import ModelStore
from tests.conftest import REAL

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
NODE, NPM = shutil.which("node"), shutil.which("npm")

pytestmark = pytest.mark.skipif(not (NODE and NPM), reason="Node clients need `node` and `npm` on PATH")

PROMPT = "Why is the sky blue?"
GREEDY = {"num_predict": 16, "temperature": 0}
REQUEST = {"model": REAL, "prompt": PROMPT, "options": GREEDY}
NOT_FOUND = "model 'nope' not found"
# Generous: 16 tokens take well under a second on an idle CPU, but far longer on a crowded one.
TIMEOUT = 300


def _installed() -> bool:
    """Whether node_modules holds exactly the versions package.json pins."""
    pins = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    for name, version in pins.items():
        manifest = NODE_DIR / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != version:
            return False
    return True


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """Runs `npm ci` in tests/node once, when its node_modules is missing or stale."""
    lock = Path(tempfile.gettempdir()) / "gengate-tests-node-npm-ci.lock"
    with open(lock, "w") as fh, contextlib.ExitStack() as stack:
        fcntl.flock(fh, fcntl.LOCK_EX)  # parallel test processes install once
        stack.callback(fcntl.flock, fh, fcntl.LOCK_UN)
        if not _installed():
            # --ignore-scripts: none of the dependencies needs an install script.
            proc = subprocess.run([NPM, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                                  cwd=NODE_DIR, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"npm ci in {NODE_DIR} failed:\n{proc.stdout}\n{proc.stderr}"
            assert _installed(), "npm ci did not install the versions package.json pins"
    return NODE_DIR / "node_modules"


def node(script: str, *args: str | dict) -> tuple[int, list[dict]]:
    """Runs a script of tests/node and returns its exit status and its JSON output lines."""
    argv = [NODE, str(NODE_DIR / script), *(json.dumps(a) if isinstance(a, dict) else a for a in args)]
    if script == "generate.mjs":
        argv[2:2] = ["--timeout-ms", str(TIMEOUT * 1000)]  # the RPC's deadline
    proc = subprocess.run(argv, cwd=NODE_DIR, capture_output=True, text=True, timeout=TIMEOUT + 30)
    assert proc.returncode in (0, 2), f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    try:
        return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{script} printed something that is not JSON ({exc}):\n{proc.stdout}") from exc


@pytest.fixture(scope="module")
def python_reply(real) -> pb.GenerateResponse:
    """The Python grpcio stub's answer to REQUEST with stream = false (exactly one message)."""
    replies = list(real.stub().Generate(
        pb.GenerateRequest(model=REAL, prompt=PROMPT, stream=False, options=pb.Options(**GREEDY)), timeout=TIMEOUT))
    assert len(replies) == 1 and replies[0].done and replies[0].response.strip()
    return replies[0]


# --- @grpc/grpc-js + @grpc/proto-loader -> the gRPC service -------------------------------------------

def test_node_grpc_client_streams_the_same_text_as_the_python_stub(real, node_modules, python_reply):
    rc, messages = node("generate.mjs", real.grpc_target, REQUEST)
    assert rc == 0 and len(messages) >= 2
    assert all(not m["done"] for m in messages[:-1]) and messages[-1]["done"]
    assert all(m["model"] == REAL and datetime.fromisoformat(m["created_at"]) for m in messages)
    assert all("done_reason" not in m for m in messages[:-1])
    final = messages[-1]
    assert final["done_reason"] in ("stop", "length") and final["eval_count"] > 0
    # Durations arrive as integer nanoseconds, like Ollama's JSON.
    assert all(isinstance(final[k], int) for k in ("total_duration", "load_duration", "prompt_eval_duration"))
    assert final["total_duration"] >= final["eval_duration"] > 0
    text = "".join(m["response"] for m in messages)
    assert text == python_reply.response
    assert (final["eval_count"], final["done_reason"], final["context"]) == (
        python_reply.eval_count, pb.DoneReason.Name(python_reply.done_reason).removeprefix("DONE_REASON_").lower(),
        list(python_reply.context))


def test_node_grpc_client_stream_false_sends_one_message(real, node_modules, python_reply):
    rc, messages = node("generate.mjs", real.grpc_target, {**REQUEST, "stream": False})
    assert rc == 0 and len(messages) == 1
    assert messages[0]["done"] and messages[0]["response"] == python_reply.response


def test_node_grpc_client_gets_not_found_with_ollamas_message(real, node_modules):
    rc, [error] = node("generate.mjs", real.grpc_target, {**REQUEST, "model": "nope"})
    assert rc == 2
    assert (error["code"], error["details"]) == (5, NOT_FOUND)  # NOT_FOUND
    assert error["reason"] == "MODEL_NOT_FOUND"  # google.rpc.ErrorInfo in grpc-status-details-bin


def python_error(real, **request) -> dict:
    """What the Python stub sees for a failing request, in generate.mjs's error shape."""
    with pytest.raises(grpc.RpcError) as caught:
        list(real.stub().Generate(pb.GenerateRequest(**request), timeout=TIMEOUT))
    out = {"code": caught.value.code().value[0], "details": caught.value.details()}
    status = rpc_status.from_call(caught.value)
    for any_ in status.details if status else ():
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if any_.Unpack(info):
            out |= {"reason": info.reason, "domain": info.domain}
        elif any_.Unpack(bad):
            out["field_violations"] = [{"field": v.field, "description": v.description} for v in bad.field_violations]
    return out


@pytest.mark.parametrize("request_", [
    {"model": "nope", "prompt": PROMPT},
    {"model": "Bad Name!", "prompt": PROMPT},
    {"model": REAL, "prompt": PROMPT, "top_logprobs": 21},
], ids=["not-found", "bad-name", "top-logprobs"])
def test_node_grpc_client_sees_the_same_error_as_the_python_stub(real, node_modules, request_):
    rc, [error] = node("generate.mjs", real.grpc_target, request_)
    assert rc == 2 and error == python_error(real, **request_)
    assert error["code"] in (3, 5) and error["reason"]


# --- the official `ollama` npm client -> the HTTP gateway ---------------------------------------------

def test_ollama_npm_client_generates_through_the_gateway(real, node_modules, python_reply):
    rc, chunks = node("ollama.mjs", real.url, {**REQUEST, "stream": True})
    assert rc == 0 and len(chunks) >= 2
    assert all(not c["done"] for c in chunks[:-1]) and chunks[-1]["done"] and chunks[-1]["eval_count"] > 0
    assert "".join(c["response"] for c in chunks) == python_reply.response

    rc, [reply] = node("ollama.mjs", real.url, {**REQUEST, "stream": False})
    assert rc == 0 and reply["done"] and reply["response"] == python_reply.response
    assert reply["done_reason"] in ("stop", "length") and reply["eval_count"] == python_reply.eval_count
    assert reply["context"] == list(python_reply.context)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_ollama_npm_client_gets_404_for_an_unknown_model(real, node_modules, stream):
    rc, messages = node("ollama.mjs", real.url, {**REQUEST, "model": "nope", "stream": stream})
    assert rc == 2 and messages == [{"error": NOT_FOUND, "status_code": 404}]


def test_ollama_npm_client_creates_a_model_with_a_draft(real, node_modules):
    """ollama-js sends create's request as given: Ollama's draft_files (here SmolLM2 as its own draft, by the digest
    of the blob the store already has) make a model that drafts from its draft model."""
    weights = "sha256:" + ModelStore(real.settings.models).get(names.parse(REAL)).digest
    request = {"model": "smol-js-drafted", "from": REAL, "draft_files": {"draft.gguf": weights}}
    rc, [reply] = node("ollama.mjs", real.url, request, "create")
    try:
        assert rc == 0 and reply == {"status": "success"}
        rc, [show] = node("ollama.mjs", real.url, {"model": "smol-js-drafted"}, "show")
        assert rc == 0 and show["speculative_decoding"] == "draft_model" and show["draft"]["format"] == "gguf"
        rc, [bad] = node("ollama.mjs", real.url, {**request, "draft_files": {}, "draft_quantize": "q8_0"}, "create")
        assert rc == 2 and bad == {"error": "--draft-quantize requires a DRAFT model", "status_code": 400}
    finally:
        ModelStore(real.settings.models).delete(names.parse("smol-js-drafted"))


@pytest.mark.parametrize("model", [REAL, "gemma3:270m"])
def test_the_ai_sdk_ollama_provider_runs_a_tool_loop(real, gemma, node_modules, model):
    """The Vercel AI SDK's Ollama provider, unchanged: with tool_choice "required" (which it sends in /api/chat's
    body) every step is a call it executes, three steps; with "auto" the model answers or calls, and the loop ends.
    Neither model's template has a tool syntax: the tools go in gengate's generic format."""
    code, [forced] = node("ai_sdk.mjs", real.url, model, "required")
    assert code == 0, forced
    assert forced["steps"] == ["tool-calls"] * 3 and len(forced["executed"]) == 3
    assert all(c["name"] == "get_weather" and isinstance(c["input"]["city"], str) for c in forced["calls"])
    code, [auto] = node("ai_sdk.mjs", real.url, model, "auto")
    assert code == 0, auto
    assert auto["steps"][-1] in ("stop", "length", "tool-calls") and len(auto["executed"]) == len(auto["calls"])
    assert auto["text"] or auto["calls"]
