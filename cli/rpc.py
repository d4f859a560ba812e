"""The command line's way to the service: the channel (--host, GENGATE_SERVICE_ADDR, TLS as the gateway's), the
bearer token, calls with their errors as CLIError, blob uploads and following a progress stream."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from cli.display import CLIError, ProgressBar
from common import channel as common_channel
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc

DEFAULT_HOST = "127.0.0.1:50051"


def target(args: argparse.Namespace) -> str:
    return args.host or os.environ.get("GENGATE_SERVICE_ADDR") or DEFAULT_HOST


def channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to the service, set up as the gateway's (common.channel): TLS (and mTLS) with
    GENGATE_SERVICE_TLS_CA (and GENGATE_SERVICE_TLS_CERT, GENGATE_SERVICE_TLS_KEY), else plaintext."""
    return common_channel.blocking_channel(target(args), common_channel.Tls.from_env(), common_channel.options())


def metadata() -> list[tuple[str, str]]:
    key = os.environ.get("GENGATE_API_KEY")
    return [("authorization", f"Bearer {key}")] if key else []


def rpc_error(exc: grpc.RpcError, where: str) -> CLIError:
    """The service's message (Ollama's text), or a hint when nothing answered."""
    details = exc.details() or exc.code().name
    unreachable = "failed to connect" in details.lower() or "backends failing" in details.lower()
    if exc.code() == grpc.StatusCode.UNAVAILABLE and unreachable:
        return CLIError(f"could not connect to the gengate service at {where}, is it running?")
    return CLIError(details)


def model_stub(args: argparse.Namespace) -> mpb_grpc.ModelServiceStub:
    return mpb_grpc.ModelServiceStub(channel(args))


def call(args: argparse.Namespace, method: str, request):
    """Calls a unary ModelService method, turning gRPC errors into CLIError."""
    try:
        return getattr(model_stub(args), method)(request, metadata=metadata(), timeout=60)
    except grpc.RpcError as exc:
        raise rpc_error(exc, target(args)) from None


BLOB_CHUNK = 1 << 20


def upload(args: argparse.Namespace, path: Path, label: str) -> str:
    """Uploads a local file as a blob (CreateBlob), with a progress bar; its "sha256:<hex>" digest."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            if head[:4] != b"GGUF" and head[8:9] != b"{":       # safetensors: a length, then its JSON header
                raise CLIError(f"{path} is not a GGUF or safetensors file")
            f.seek(0)
            digest = hashlib.sha256()
            while chunk := f.read(BLOB_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise CLIError(str(exc)) from None
    name = f"sha256:{digest.hexdigest()}"
    bar = ProgressBar(f"{label} {path.name}", size)

    def chunks():
        yield mpb.CreateBlobRequest(digest=name)
        sent = 0
        with open(path, "rb") as f:
            while chunk := f.read(BLOB_CHUNK):
                sent += len(chunk)
                bar.update(sent)
                yield mpb.CreateBlobRequest(data=chunk)
    try:
        model_stub(args).CreateBlob(chunks(), metadata=metadata())
    except grpc.RpcError as exc:
        raise rpc_error(exc, target(args)) from None
    bar.finish()
    return name


def follow(stream: Iterator[Any]) -> None:
    """Shows a pull's or a create's progress: a bar for steps that report bytes, a line for the others."""
    bars: dict[str, ProgressBar] = {}
    for step in stream:
        if step.total:
            bar = bars.get(step.status)
            if bar is None:
                bar = bars[step.status] = ProgressBar(step.status, step.total)
            bar.update(step.completed)
            if step.completed >= step.total:
                bar.finish()
        else:
            for status, bar in list(bars.items()):
                if status != step.status:
                    bar.finish()
                    del bars[status]
            print(step.status, file=sys.stderr, flush=True)


def create(args: argparse.Namespace, request: mpb.CreateModelRequest) -> None:
    try:
        follow(model_stub(args).CreateModel(request, metadata=metadata()))
    except grpc.RpcError as exc:
        raise rpc_error(exc, target(args)) from None
