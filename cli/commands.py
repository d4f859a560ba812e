"""The commands: run, list, ps, show, cp, rm, pull, create, import, and serve (the service and the gateway as child
processes, as `make run` starts them)."""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from cli.display import (
    CLIError,
    ProgressBar,
    human_bytes,
    human_time,
    print_stats,
    print_table,
    processor,
    seconds,
)
from cli.rpc import call, channel, create, follow, metadata, model_stub, rpc_error, target, upload
from common import enums, modelfile, requests
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from gengate.v1 import model_pb2 as mpb


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
    for field in ("width", "height", "steps"):
        if getattr(args, field, None) is not None:
            setattr(request, field, getattr(args, field))
    return request


def image_path(args: argparse.Namespace, prompt: str) -> Path:
    """Where an image goes: --output, else a new file in this folder named after the prompt."""
    if args.output:
        return Path(args.output)
    stem = "-".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:48].strip("-") or "image"
    path, n = Path(f"{stem}.png"), 1
    while path.exists():
        n += 1
        path = Path(f"{stem}-{n}.png")
    return path


def generate(stub: pb_grpc.GenerateServiceStub, request: pb.GenerateRequest, args: argparse.Namespace,
             where: str) -> pb.GenerateResponse:
    """Streams one Generate call to stdout (thinking first, as Ollama shows it); returns the final reply."""
    out = sys.stdout
    final, thinking, wrote = pb.GenerateResponse(), False, False
    steps: ProgressBar | None = None
    try:
        for reply in stub.Generate(request, metadata=metadata()):
            if reply.total:                          # an image model's steps
                steps = steps or ProgressBar("generating", reply.total, count=str)
                steps.update(reply.completed, force=True)
            if reply.image:
                if steps is not None:
                    steps.finish()
                path = image_path(args, request.prompt)
                try:
                    path.write_bytes(reply.image)
                except OSError as exc:
                    raise CLIError(f"cannot write the image: {exc}") from None
                out.write(f"Image saved to: {path}\n")
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
    if not final.image:
        out.write("\n")
        if args.output:
            print(f"the model wrote text, not an image: nothing was written to {args.output}", file=sys.stderr)
    out.flush()
    if args.verbose:
        print_stats(final)
    return final


def cmd_run(args: argparse.Namespace) -> int:
    key = (args.output or "").partition("=")[0]
    if "=" in (args.output or "") and key in pb.Options.DESCRIPTOR.fields_by_name:
        raise CLIError(f"-o is --output (where an image goes): for the option {key}, use --option {args.output}")
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


def cmd_list(args: argparse.Namespace) -> int:
    reply = call(args, "ListModels", mpb.ListModelsRequest())
    print_table(["NAME", "ID", "SIZE", "MODIFIED"],
                [[m.name, m.digest[:12], human_bytes(m.size), human_time(seconds(m.modified_at))]
                 for m in reply.models])
    return 0


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
            raise CLIError("a second FROM must name a local file (a projector, or an image model's vae or llm), "
                           "after a FROM of a local file")
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
    """A local file as a model: uploaded (CreateBlob), then created with the given layers (CreateModel). An image
    model's separate parts go as further files named by their role (vae, llm), which is how create knows them."""
    path = Path(args.file)
    digest = upload(args, path, "importing")
    files = {path.name: digest}
    if args.projector:                      # a vision model: its projector is one more file of the model
        projector = Path(args.projector)
        if projector.name == path.name:
            raise CLIError("the projector and the model files need different names")
        files[projector.name] = upload(args, projector, "importing")
    for role, given in (("vae", args.vae), ("llm", args.text_encoder)):
        if given:
            part = Path(given)
            files[role + (part.suffix or ".gguf")] = upload(args, part, "importing")
    create(args, mpb.CreateModelRequest(model=args.name, files=files, template=args.template or "",
                                        system=args.system or "",
                                        messages=[pb.Message(role=m["role"], content=m["content"])
                                                  for m in args.message or ()]))
    print(f"imported '{args.name}' (sha256:{digest[7:19]})")
    return 0


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
