#!/usr/bin/env node
// The Vercel AI SDK with its Ollama provider (ollama-ai-provider-v2) against gengate's HTTP gateway: a tool loop.
//
//   node ai_sdk.mjs HOST MODEL TOOL_CHOICE
//
// generateText with one tool (get_weather, a zod schema) and up to three steps; TOOL_CHOICE is "auto" or
// "required" (the provider sends it in /api/chat's body: Ollama ignores it, gengate honours it). Prints one JSON
// line: the steps' finish reasons, the calls made (name and input), the tool results, and the final text.
// Exit status 0; on an error {"error": "..."} and exit status 2.
import { generateText, stepCountIs, tool } from "ai";
import { createOllama } from "ollama-ai-provider-v2";
import { z } from "zod";

const [host, model, toolChoice] = process.argv.slice(2);
const ollama = createOllama({ baseURL: `${host}/api` });
const executed = [];
try {
  const result = await generateText({
    model: ollama(model),
    prompt: "What is the weather in Paris?",
    temperature: 0,
    providerOptions: { ollama: { options: { num_predict: 40 } } },    // the provider's way to Ollama's options
    toolChoice,
    stopWhen: stepCountIs(3),
    tools: {
      get_weather: tool({
        description: "Get the current weather in a city",
        inputSchema: z.object({ city: z.string().describe("the city") }),
        execute: async ({ city }) => {
          executed.push(city);
          return `18 degrees and sunny in ${city}`;
        },
      }),
    },
  });
  const calls = result.steps.flatMap((s) => s.toolCalls.map((c) => ({ name: c.toolName, input: c.input })));
  process.stdout.write(JSON.stringify({
    steps: result.steps.map((s) => s.finishReason), calls, executed, text: result.text,
  }) + "\n");
} catch (err) {
  process.stdout.write(JSON.stringify({ error: String(err && err.message ? err.message : err) }) + "\n");
  process.exit(2);
}
