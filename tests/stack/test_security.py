"""Host guard, Origin allowlist, bearer token and TLS/mTLS ."""
from __future__ import annotations

import subprocess

import grpc
import httpx
import ollama
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from tests.fake_engine import FakeEngine
from tests.harness import Stack

BODY = {"model": "tiny", "prompt": "hi", "stream": False}


@pytest.mark.parametrize("host,status", [
    ("evil.example", 403), ("evil.example:11434", 403), ("8.8.8.8", 403),
    ("localhost:11434", 200), ("127.0.0.1", 200), ("192.168.1.5:11434", 200), ("box.local", 200),
    ("api.internal", 200), ("app.localhost", 200), ("[::1]:11434", 200)])
def test_host_guard_against_dns_rebinding(fake, engine, host, status):
    resp = httpx.post(fake.url + "/api/generate", json=BODY, headers={"Host": host})
    assert resp.status_code == status
    if status == 403:
        assert engine.started == 0


@pytest.fixture(scope="module")
def with_origins(models):
    stack = Stack(models, FakeEngine(), gateway={"origins": "https://app.example, chrome-extension://*"}).start()
    yield stack
    stack.stop()


@pytest.mark.parametrize("origin,allowed", [
    ("http://localhost:3000", True), ("https://127.0.0.1", True), ("app://obsidian.md", True),
    ("https://app.example", True), ("chrome-extension://abc", True),
    ("https://evil.example", False), ("http://localhost.evil.example", False)])
def test_origin_allowlist_and_cors(with_origins, origin, allowed):
    resp = httpx.post(with_origins.url + "/api/generate", json=BODY, headers={"Origin": origin})
    if allowed:
        assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == origin
        streamed = httpx.post(with_origins.url + "/api/generate", json={**BODY, "stream": True},
                              headers={"Origin": origin})
        assert streamed.headers["access-control-allow-origin"] == origin
        preflight = httpx.options(with_origins.url + "/api/generate", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204 and "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-origin"] == origin
    else:
        assert resp.status_code == 403 and "access-control-allow-origin" not in resp.headers
    assert "access-control-allow-credentials" not in resp.headers


@pytest.fixture(scope="module")
def keyed(models):
    stack = Stack(models, FakeEngine(), api_key="s3cret").start()
    yield stack
    stack.stop()


def test_bearer_token_on_both_transports(keyed):
    url = keyed.url + "/api/generate"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        resp = httpx.post(url, json=BODY, headers=headers)
        assert (resp.status_code, resp.json()) == (401, {"error": "unauthorized"})
    assert keyed.engine.started == 0
    assert httpx.post(url, json=BODY, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert ollama.Client(host=keyed.url, headers={"Authorization": "Bearer s3cret"}).generate(
        model="tiny", prompt="hi").done
    with pytest.raises(grpc.RpcError) as err:
        list(keyed.stub().Generate(pb.GenerateRequest(model="tiny", prompt="hi")))
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
    ok = list(keyed.stub().Generate(pb.GenerateRequest(model="tiny", prompt="hi"),
                                    metadata=[("authorization", "Bearer s3cret")]))
    assert ok[-1].done
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(keyed.grpc_target))
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(keyed.url + "/").status_code == 200                # probes stay open


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gengate-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d


def test_mtls_between_gateway_and_service(models, certs):
    def c(name):
        return str(certs / name)
    stack = Stack(models, FakeEngine(), tls_cert=c("server.pem"), tls_key=c("server.key"), tls_client_ca=c("ca.pem"),
                  gateway={"service_tls_ca": c("ca.pem"), "service_tls_cert": c("client.pem"),
                           "service_tls_key": c("client.key")}).start()
    try:
        assert ollama.Client(host=stack.url).generate(model="tiny", prompt="hi").done      # gateway → mTLS → service
        # The CLI is a client of the service too, with the gateway's variables.
        from tests.system.test_cli import gengate
        listed = gengate("list", "--host", stack.grpc_target, env={
            "GENGATE_SERVICE_TLS_CA": c("ca.pem"), "GENGATE_SERVICE_TLS_CERT": c("client.pem"),
            "GENGATE_SERVICE_TLS_KEY": c("client.key")})
        assert listed.returncode == 0 and "tiny:latest" in listed.stdout, listed.stderr
        assert gengate("list", "--host", stack.grpc_target, timeout=60).returncode != 0       # plaintext: refused
        request = pb.GenerateRequest(model="tiny", prompt="hi")
        insecure = pb_grpc.GenerateServiceStub(grpc.insecure_channel(stack.grpc_target))
        no_cert = pb_grpc.GenerateServiceStub(grpc.secure_channel(
            stack.grpc_target, grpc.ssl_channel_credentials(certs.joinpath("ca.pem").read_bytes())))
        for stub in (insecure, no_cert):
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Generate(request, timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stack.stop()
