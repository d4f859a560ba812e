"""Who may call the gateway from a browser: the Host guard and the Origin allowlist.

Both follow Ollama. When the gateway listens on a loopback address, a request whose Host
is not local gets 403: a web page cannot reach it by DNS rebinding (CVE-2024-28224). A
request with an Origin outside the allowlist gets 403; allowed origins get CORS headers.
The bearer token (GENGATE_API_KEY) is checked by the service, for both transports; the
gateway forwards the client's Authorization header to it.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp import web

# Ollama's built-in origins (envconfig.AllowedOrigins); GENGATE_ORIGINS adds to them.
DEFAULT_ORIGINS = tuple(f"{scheme}://{host}{port}" for scheme in ("http", "https")
                        for host in ("localhost", "127.0.0.1", "0.0.0.0") for port in ("", ":*")) + (
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
# Ollama's list (routes.go: the OpenAI SDKs' OpenAI-Beta and x-stainless-* headers), plus what Ollama forgot: the
# Anthropic SDK's headers (a browser client of /v1/messages fails preflight on Ollama), x-stainless-read-timeout,
# and X-Request-Id.
ALLOW_HEADERS = ", ".join([
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "X-Request-Id",
    "OpenAI-Beta", "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
    "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
    "x-stainless-poll-helper", "x-stainless-retry-count", "x-stainless-runtime", "x-stainless-runtime-version",
    "x-stainless-timeout", "x-stainless-read-timeout",
    "anthropic-version", "anthropic-beta", "x-api-key", "anthropic-dangerous-direct-browser-access"])
# Response headers a page may read: the request id (to report), Retry-After (on 503).
EXPOSE_HEADERS = "X-Request-Id, Retry-After"


def is_loopback(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]") or addr
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str) -> bool:
    """Ollama's allowedHostsMiddleware: local names and non-public IP literals."""
    host = urlsplit("//" + host_header).hostname or ""
    if host in ("localhost", socket.gethostname().lower()) or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def origin_allowed(origin: str, extra: str) -> bool:
    patterns = DEFAULT_ORIGINS + tuple(o.strip() for o in extra.split(",") if o.strip())
    return any(p == "*" or fnmatch.fnmatchcase(origin, p) for p in patterns)


def guard(request: web.Request, *, loopback: bool, origins: str) -> web.StreamResponse | None:
    """A 403 or preflight response to send instead of handling the request, or None."""
    if loopback and not host_allowed(request.host.lower()):
        return web.json_response({"error": "host not allowed"}, status=403)
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if not origin_allowed(origin, origins):
        return web.json_response({"error": "origin not allowed"}, status=403)
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "43200"})
    return None


def add_cors(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers["Vary"] = "Origin"
