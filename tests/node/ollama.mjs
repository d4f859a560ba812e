#!/usr/bin/env node
// The official ollama npm client (ollama-js) against gengate's HTTP gateway.
//
//   node ollama.mjs HOST REQUEST_JSON [METHOD]
//
//   node ollama.mjs http://127.0.0.1:11434 '{"model": "smollm2:135m", "prompt": "Hi", "stream": true}'
//
// REQUEST_JSON is passed unchanged to `new Ollama({host})[METHOD](...)`, METHOD "generate" by default
// (or "create", "show"; ollama-js sends "stream": false when it is absent). With "stream": true it prints one JSON line per chunk;
// otherwise one JSON line with the whole response. Exit status 0.
// On an error it prints {"error": "...", "status_code": <HTTP status or null>} and exits 2:
// ollama-js throws a ResponseError (error, status_code) for a non-2xx reply, and a plain Error
// (status_code null) for an {"error": ...} line inside a stream.
import { Ollama } from "ollama";

function usage(message) {
  process.stderr.write(`${message}\nusage: node ollama.mjs HOST REQUEST_JSON [METHOD]\n`);
  process.exit(64);
}

async function main() {
  const argv = process.argv.slice(2);
  if (argv.length !== 2 && argv.length !== 3) usage("expected HOST, REQUEST_JSON and perhaps METHOD");
  const [host, requestText, method = "generate"] = argv;
  if (!["generate", "create", "show"].includes(method)) usage(`unknown METHOD ${method}`);
  let request;
  try {
    request = JSON.parse(requestText);
  } catch (err) {
    usage(`REQUEST_JSON: ${err.message}`);
  }
  const client = new Ollama({ host });
  try {
    if (request.stream) {
      for await (const chunk of await client[method](request)) {
        process.stdout.write(`${JSON.stringify(chunk)}\n`);
      }
    } else {
      process.stdout.write(`${JSON.stringify(await client[method](request))}\n`);
    }
  } catch (err) {
    const out = { error: err.error ?? err.message, status_code: err.status_code ?? null };
    process.stdout.write(`${JSON.stringify(out)}\n`);
    process.exitCode = 2;
  }
}

await main();
