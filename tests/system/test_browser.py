"""A real browser (headless Chromium) calling the gateway from a web page on another origin: CORS preflights
with the headers the official SDKs send (OpenAI's x-stainless-*, Anthropic's x-api-key and anthropic-*),
streamed replies read by the page, an exposed X-Request-Id, and a page from an origin outside the allowlist
refused by the browser. `make test` installs Chromium (`make browser`) when it is missing."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fake_engine import FakeEngine
from tests.harness import Stack

PAGE = """<!doctype html><meta charset="utf-8"><title>gengate from a page</title><script>
const GATEWAY = "%(gateway)s";
async function lines(resp) {            // a streamed body as the page reads it: chunk by chunk
  const reader = resp.body.getReader(), decoder = new TextDecoder();
  let text = "";
  for (;;) { const {done, value} = await reader.read(); if (done) break; text += decoder.decode(value); }
  return text;
}
async function attempt(name, url, init, read) {
  try {
    const resp = await fetch(GATEWAY + url, init);
    return {name, status: resp.status, requestId: resp.headers.get("x-request-id"), body: await read(resp)};
  } catch (e) { return {name, failed: String(e)}; }
}
const OPENAI = {"Authorization": "Bearer sk-browser", "Content-Type": "application/json", "OpenAI-Beta": "assistants=v2",
  "x-stainless-lang": "js", "x-stainless-os": "Unknown", "x-stainless-arch": "unknown", "x-stainless-runtime": "browser:chrome",
  "x-stainless-runtime-version": "156", "x-stainless-package-version": "6.0.0", "x-stainless-retry-count": "0",
  "x-stainless-timeout": "600", "x-stainless-read-timeout": "600", "x-stainless-helper-method": "stream"};
const ANTHROPIC = {"x-api-key": "sk-browser", "anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-05-16",
  "anthropic-dangerous-direct-browser-access": "true", "content-type": "application/json", "accept": "application/json",
  "x-stainless-lang": "js", "x-stainless-retry-count": "0", "x-stainless-timeout": "600"};
(async () => {
  const results = [
    await attempt("ollama", "/api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: "tiny", messages: [{role: "user", content: "hi"}]})}, lines),
    await attempt("openai", "/v1/chat/completions", {method: "POST", headers: OPENAI,
      body: JSON.stringify({model: "tiny", messages: [{role: "user", content: "hi"}], stream: true})}, lines),
    await attempt("anthropic", "/v1/messages", {method: "POST", headers: ANTHROPIC,
      body: JSON.stringify({model: "tiny", max_tokens: 8, messages: [{role: "user", content: "hi"}], stream: true})},
      lines),
    await attempt("models", "/v1/models", {headers: ANTHROPIC}, r => r.json()),
  ];
  await fetch("/result", {method: "POST", body: JSON.stringify(results)});
})();
</script>"""


def _browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert found, "no Chromium: `make browser` installs it (make test does)"
    return found


class _Page:
    """Serves the page on its own origin and collects what the page posts back."""

    def __init__(self, gateway: str):
        self.results: list = []
        self.done = threading.Event()
        page = (PAGE % {"gateway": gateway}).encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def do_POST(self):
                outer.results = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()
                outer.done.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def visit(self, origin_host: str, tmp_path) -> list[dict]:
        """Opens http://{origin_host}:{port}/ (resolved to this server) and returns the page's results."""
        proc = subprocess.Popen([
            _browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / origin_host}",
            f"--host-resolver-rules=MAP {origin_host} 127.0.0.1", f"http://{origin_host}:{self.port}/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert self.done.wait(60), "the page reported nothing within a minute"
        finally:
            proc.kill()
            proc.wait()
        self.done.clear()
        return self.results


@pytest.fixture(scope="module")
def stack(models):
    stack = Stack(models, FakeEngine(), gateway={"origins": "http://app.example:*"}).start()
    yield stack
    stack.stop()


def test_a_page_on_an_allowed_origin_uses_every_dialect(stack, tmp_path):
    page = _Page(stack.url)
    try:
        results = {r["name"]: r for r in page.visit("app.example", tmp_path)}
    finally:
        page.server.shutdown()
    for name in ("ollama", "openai", "anthropic", "models"):
        assert "failed" not in results[name], results[name]      # the preflight passed, the body was readable
        assert results[name]["status"] == 200, results[name]
        assert results[name]["requestId"], f"{name}: X-Request-Id is not exposed to the page"
    ndjson = [json.loads(line) for line in results["ollama"]["body"].splitlines()]
    assert ndjson[-1]["done"] and "".join(c["message"]["content"] for c in ndjson).startswith("t0 t1")
    assert results["openai"]["body"].rstrip().endswith("data: [DONE]")
    assert "event: message_stop" in results["anthropic"]["body"]
    assert results["models"]["body"]["data"][0]["type"] == "model"      # anthropic-version: Anthropic's shape


def test_a_page_on_another_origin_is_refused(stack, tmp_path):
    page, started = _Page(stack.url), stack.engine.started
    try:
        results = page.visit("evil.example", tmp_path)
    finally:
        page.server.shutdown()
    assert [r["name"] for r in results if "failed" in r] == ["ollama", "openai", "anthropic", "models"], results
    assert stack.engine.started == started            # refused at the preflight: nothing ran
