#!/usr/bin/env node
// A Node gRPC client for gengate: loads proto/gengate/v1/generate.proto at run time with
// @grpc/proto-loader (no generated code) and calls the server-streaming
// gengate.v1.GenerateService/Generate.
//
//   node generate.mjs [--timeout-ms N] [--proto-root DIR] TARGET REQUEST_JSON
//
//   node generate.mjs 127.0.0.1:50051 \
//     '{"model": "smollm2:135m", "prompt": "Why is the sky blue?", "options": {"num_predict": 16, "temperature": 0}}'
//
// REQUEST_JSON is a GenerateRequest with the proto's snake_case field names. For convenience a few
// fields also take Ollama's JSON forms: "format": "json" or a JSON Schema object, "think": true/false
// or "low".."max", "keep_alive": seconds (number) or a Go duration string ("5m", "1h30m", "-1s").
//
// Output: one JSON line per streamed GenerateResponse, with snake_case names like Ollama's JSON:
// durations as integer nanoseconds, timestamps as RFC 3339 strings (nanosecond precision),
// done_reason as Ollama's word ("stop", "length", "load", "unload"; absent while not done),
// bytes as base64 and google.protobuf.Struct as a plain JSON object. Exit status 0.
// On a gRPC error it prints {"code": <numeric status>, "details": "..."} and exits 2; when the
// server sends google.rpc.Status details, the line also has "reason" and "domain" (ErrorInfo) and
// "field_violations" (BadRequest: [{"field", "description"}]). Bad arguments exit 64.
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DEFAULT_PROTO_ROOT = path.resolve(HERE, "..", "..", "proto");
const PROTO_FILE = "gengate/v1/generate.proto";
const REASON_KEY = "gengate-error-reason"; // the older reason trailer, still read when present
let REQUEST_FIELDS = null; // set by loadService
let RESPONSE_FIELDS = null;

function usage(message) {
  process.stderr.write(`${message}\nusage: node generate.mjs [--timeout-ms N] [--proto-root DIR] TARGET REQUEST_JSON\n`);
  process.exit(64);
}

function parseArgs(argv) {
  const args = { timeoutMs: 120_000, protoRoot: DEFAULT_PROTO_ROOT, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--timeout-ms") args.timeoutMs = Number(argv[++i]);
    else if (arg === "--proto-root") args.protoRoot = path.resolve(argv[++i] ?? "");
    else if (arg === "-h" || arg === "--help") usage("Calls gengate.v1.GenerateService/Generate and prints the stream as JSON lines.");
    else args.positional.push(arg);
  }
  if (args.positional.length !== 2) usage("expected TARGET and REQUEST_JSON");
  if (!Number.isFinite(args.timeoutMs) || args.timeoutMs <= 0) usage("--timeout-ms must be a positive number");
  return args;
}

// The proto imports google/protobuf/{duration,struct,timestamp}.proto. protobufjs (which proto-loader
// uses) ships these well-known types as bundled definitions and resolves any "google/protobuf/*.proto"
// import to them before it consults the include path, so includeDirs only needs the proto root.
export function loadService(protoRoot = DEFAULT_PROTO_ROOT) {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [protoRoot],
    keepCase: true, // snake_case field names, as in the proto and in Ollama's JSON
    longs: String, // int64 (seed, completed, total, Duration.seconds) without precision loss
    enums: String, // "DONE_REASON_STOP"
    bytes: String, // base64
    defaults: true, // print every scalar field, e.g. done: false
    oneofs: true, // virtual oneof fields name the member that is set
  });
  const pkg = grpc.loadPackageDefinition(definition);
  // Field names in proto order: requests are checked against them (protobufjs would drop a misspelt
  // field silently) and printed responses follow the contract's order.
  REQUEST_FIELDS = definition["gengate.v1.GenerateRequest"].type.field.map((f) => f.name);
  RESPONSE_FIELDS = definition["gengate.v1.GenerateResponse"].type.field.map((f) => f.name);
  return pkg.gengate.v1.GenerateService;
}

// --- request: Ollama's JSON conveniences -> GenerateRequest fields ---------------------------------

const GO_UNITS = { ns: 1n, us: 1_000n, "µs": 1_000n, "μs": 1_000n, ms: 1_000_000n, s: 1_000_000_000n, m: 60_000_000_000n, h: 3_600_000_000_000n };

function nanosToDuration(ns) {
  // google.protobuf.Duration: seconds and nanos carry the same sign.
  const seconds = ns / 1_000_000_000n; // BigInt division truncates toward zero
  const nanos = ns - seconds * 1_000_000_000n;
  return { seconds: seconds.toString(), nanos: Number(nanos) };
}

function toDuration(value) {
  if (typeof value === "number") {
    // Ollama reads a bare number as seconds.
    return nanosToDuration(BigInt(Math.round(value * 1e9)));
  }
  if (typeof value === "string") {
    const match = /^([+-]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$/.exec(value);
    if (value === "0") return { seconds: "0", nanos: 0 };
    if (!match) usage(`keep_alive: invalid duration ${JSON.stringify(value)}`);
    let total = 0n;
    for (const [, num, unit] of value.matchAll(/((?:\d+(?:\.\d*)?|\.\d+))(ns|us|µs|μs|ms|s|m|h)/g)) {
      const [whole, frac = ""] = num.split(".");
      const scale = GO_UNITS[unit];
      total += BigInt(whole || "0") * scale;
      if (frac) total += (BigInt(frac) * scale) / 10n ** BigInt(frac.length);
    }
    return nanosToDuration(match[1] === "-" ? -total : total);
  }
  return value; // already {seconds, nanos}
}

export function toRequest(json) {
  const unknown = REQUEST_FIELDS ? Object.keys(json).filter((key) => !REQUEST_FIELDS.includes(key)) : [];
  if (unknown.length) usage(`REQUEST_JSON: unknown GenerateRequest field(s): ${unknown.join(", ")}`);
  const request = { ...json };
  if (typeof request.format === "string") {
    if (request.format === "json") request.format = { json: true };
    else if (request.format === "") delete request.format;
    else request.format = { json_schema: request.format };
  } else if (request.format && typeof request.format === "object" && !("json" in request.format) && !("json_schema" in request.format)) {
    request.format = { json_schema: JSON.stringify(request.format) };
  }
  if (typeof request.think === "boolean") request.think = { enabled: request.think };
  else if (typeof request.think === "string") request.think = { level: `THINK_LEVEL_${request.think.toUpperCase()}` };
  if (request.keep_alive !== undefined && request.keep_alive !== null) request.keep_alive = toDuration(request.keep_alive);
  return request;
}

// --- response: GenerateResponse -> JSON ----------------------------------------------------------

function durationNanos(d) {
  if (!d) return undefined;
  return Number(BigInt(d.seconds ?? 0) * 1_000_000_000n + BigInt(d.nanos ?? 0));
}

function timestampString(t) {
  if (!t) return undefined;
  const seconds = BigInt(t.seconds ?? 0);
  const nanos = t.nanos ?? 0;
  const iso = new Date(Number(seconds) * 1000).toISOString(); // 2024-01-01T00:00:00.000Z
  return `${iso.slice(0, 19)}.${String(nanos).padStart(9, "0")}Z`;
}

function structValue(v) {
  if (!v) return null;
  switch (v.kind) {
    case "null_value": return null;
    case "number_value": return v.number_value;
    case "string_value": return v.string_value;
    case "bool_value": return v.bool_value;
    case "struct_value": return structObject(v.struct_value);
    case "list_value": return (v.list_value?.values ?? []).map(structValue);
    default: return null;
  }
}

function structObject(s) {
  const out = {};
  for (const [key, value] of Object.entries(s?.fields ?? {})) out[key] = structValue(value);
  return out;
}

const DURATIONS = ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"];

export function toJSON(msg) {
  const out = {};
  for (const key of RESPONSE_FIELDS ?? Object.keys(msg)) out[key] = msg[key];
  out.created_at = timestampString(msg.created_at);
  for (const key of DURATIONS) {
    const ns = durationNanos(msg[key]);
    if (ns === undefined) delete out[key];
    else out[key] = ns;
  }
  if (msg.done_reason && msg.done_reason !== "DONE_REASON_UNSPECIFIED") {
    out.done_reason = msg.done_reason.replace(/^DONE_REASON_/, "").toLowerCase();
  } else {
    delete out.done_reason;
  }
  for (const key of ["completed", "total"]) out[key] = Number(msg[key] ?? 0);
  if (!msg.debug_info) delete out.debug_info;
  out.tool_calls = (msg.tool_calls ?? []).map((call) => ({
    function: { ...call.function, arguments: structObject(call.function?.arguments) },
  }));
  return out;
}

// --- errors: google.rpc.Status details ---------------------------------------------------------------
// The service sends a google.rpc.Status in the grpc-status-details-bin trailer, with an ErrorInfo
// (reason: a stable name such as MODEL_NOT_FOUND) and, when a field is to blame, a BadRequest.
// Those protos do not ship with protobufjs, so the few fields needed are read from the wire format.

function* wireFields(buf) {
  let pos = 0;
  const varint = () => {
    let result = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (pos >= buf.length) throw new Error("truncated varint");
      const byte = buf[pos++];
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
    }
  };
  while (pos < buf.length) {
    const key = Number(varint());
    const [field, type] = [key >>> 3, key & 7];
    if (type === 0) yield [field, varint()];
    else if (type === 2) {
      const len = Number(varint());
      yield [field, buf.subarray(pos, pos + len)];
      pos += len;
    } else if (type === 1) pos += 8;
    else if (type === 5) pos += 4;
    else throw new Error(`unsupported wire type ${type}`);
  }
}

function decodeFields(buf, names) {
  const out = {};
  for (const [field, value] of wireFields(buf)) {
    const name = names[field];
    if (!name) continue;
    if (name.endsWith("[]")) (out[name.slice(0, -2)] ??= []).push(value);
    else out[name] = value;
  }
  return out;
}

const utf8 = (b) => Buffer.from(b).toString("utf8");

export function errorDetails(metadata) {
  const out = {};
  const legacy = metadata?.get(REASON_KEY)?.[0];
  if (legacy !== undefined) out.reason = String(legacy);
  const raw = metadata?.get("grpc-status-details-bin")?.[0];
  if (!raw) return out;
  try {
    const status = decodeFields(Buffer.from(raw), { 3: "details[]" }); // code 1, message 2: already known
    for (const any of status.details ?? []) {
      const { type_url: typeUrl, value = new Uint8Array() } = decodeFields(any, { 1: "type_url", 2: "value" });
      const type = utf8(typeUrl ?? []).split("/").pop();
      if (type === "google.rpc.ErrorInfo") {
        const info = decodeFields(value, { 1: "reason", 2: "domain" });
        out.reason = utf8(info.reason ?? []);
        out.domain = utf8(info.domain ?? []);
      } else if (type === "google.rpc.BadRequest") {
        out.field_violations = (decodeFields(value, { 1: "v[]" }).v ?? []).map((v) => {
          const fv = decodeFields(v, { 1: "field", 2: "description" });
          return { field: utf8(fv.field ?? []), description: utf8(fv.description ?? []) };
        });
      }
    }
  } catch (err) {
    out.details_error = `cannot decode grpc-status-details-bin: ${err.message}`;
  }
  return out;
}

// --- main ----------------------------------------------------------------------------------------

function main() {
  const args = parseArgs(process.argv.slice(2));
  const [target, requestText] = args.positional;
  let json;
  try {
    json = JSON.parse(requestText);
  } catch (err) {
    usage(`REQUEST_JSON: ${err.message}`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) usage("REQUEST_JSON must be a JSON object");

  const GenerateService = loadService(args.protoRoot);
  const client = new GenerateService(target, grpc.credentials.createInsecure());
  const call = client.Generate(toRequest(json), { deadline: new Date(Date.now() + args.timeoutMs) });

  call.on("data", (msg) => {
    process.stdout.write(`${JSON.stringify(toJSON(msg))}\n`);
  });
  call.on("error", (err) => {
    const out = { code: err.code, details: err.details, ...errorDetails(err.metadata) };
    process.stdout.write(`${JSON.stringify(out)}\n`);
    client.close();
    process.exitCode = 2;
  });
  call.on("end", () => {
    client.close();
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
