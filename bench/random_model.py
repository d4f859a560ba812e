"""A model with a real model's shapes, tensor types and vocabulary, and random weights: what `bench/gpu.sh` decodes
on a GPU machine, where no weights can be fetched and the real file is over what a device call carries (64 MiB).
Decoding speed depends on the shapes and types, not the values.

    python -m bench.random_model describe MODEL.gguf DESC.json.gz    # metadata and tensor list, no weights (~1 MiB)
    python -m bench.random_model write DESC.json.gz OUT.gguf         # the model, random weights (std 0.02, norms 1)
"""
from __future__ import annotations

import argparse
import base64
import gzip
import json
import sys
import time
from typing import Any

import numpy as np


def describe(model: str, out: str) -> None:
    import gguf
    reader = gguf.GGUFReader(model)
    fields: list[dict[str, Any]] = []
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        if isinstance(value, bytes):
            value = {"b64": base64.b64encode(value).decode()}
        fields.append({"key": field.name, "types": [int(t) for t in field.types], "value": value})
    tensors = [{"name": t.name, "type": int(t.tensor_type), "shape": [int(n) for n in t.shape]} for t in reader.tensors]
    arch = reader.fields["general.architecture"].contents()
    with gzip.open(out, "wt") as f:
        json.dump({"architecture": arch, "fields": fields, "tensors": tensors}, f)


def write(desc: str, out: str, seed: int = 0) -> None:
    import gguf
    with gzip.open(desc, "rt") as f:
        spec = json.load(f)
    writer = gguf.GGUFWriter(out, spec["architecture"])
    for field in spec["fields"]:
        types = [gguf.GGUFValueType(t) for t in field["types"]]
        value = field["value"]
        if isinstance(value, dict):
            value = base64.b64decode(value["b64"])
        if types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(field["key"], value, types[0], sub_type=types[-1])
        else:
            writer.add_key_value(field["key"], value, types[0])
    rng = np.random.default_rng(seed)
    for tensor in spec["tensors"]:
        shape = tuple(reversed(tensor["shape"]))                 # ggml lists the fastest dimension first
        kind = gguf.GGMLQuantizationType(tensor["type"])
        if len(shape) == 1:
            values = np.ones(shape, dtype=np.float32)            # norms and biases
        else:
            values = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor["name"], values)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor["name"], values.astype(np.float16))
        else:
            writer.add_tensor(tensor["name"], gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe")
    d.add_argument("model")
    d.add_argument("out")
    w = sub.add_parser("write")
    w.add_argument("desc")
    w.add_argument("out")
    w.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.monotonic()
    if args.command == "describe":
        describe(args.model, args.out)
    else:
        write(args.desc, args.out, args.seed)
    print(f"{args.out}: {time.monotonic() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
