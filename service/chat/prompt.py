"""Prompt construction: what text the model is given for a request, as Ollama builds it.

Precedence, as in Ollama: raw → the prompt verbatim; a request `template` or a
`suffix` → that Go template (or the model's) executed directly; otherwise the model's
Go TEMPLATE if it has one, else the GGUF chat template (Jinja, rendered sandboxed),
else the prompt itself. A `context` from an earlier reply is prepended as text. Go templates render here (their
interpreter bounds its steps, output and memory), Jinja ones in workers (service.chat.jinja).
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from service.cache import BoundedCache
from service.chat import gotemplate
from service.chat.jinja import ChatTemplates
from service.chat.tools import go_values
from service.errors import invalid


@dataclasses.dataclass(frozen=True)
class PromptInput:
    prompt: str
    system: str = ""                 # request system, else the model's
    suffix: str = ""
    template: str | None = None      # request template, else the model's Go template
    think: bool | None = None        # None: not set by the request
    think_level: str = ""
    turns: tuple[dict[str, str], ...] = ()   # the model's MESSAGEs, between the system message and the prompt


# Parsed Go templates: a request may send its own (up to GENGATE_MAX_PROMPT_BYTES), so bounded in bytes of source.
_GO_CACHE: BoundedCache[str, gotemplate.Template] = BoundedCache(8 << 20, lambda source, _: 4 * len(source) + 1024)


def _go(source: str) -> gotemplate.Template:
    template = _GO_CACHE.get(source)
    if template is None:
        try:
            template = gotemplate.parse(source)
        except RecursionError:
            raise gotemplate.TemplateError("template: nesting too deep") from None
        _GO_CACHE.put(source, template)
    return template


def parse_go_template(source: str) -> gotemplate.Template:
    """Parses a Go template; a syntax error is the client's mistake (400)."""
    try:
        return _go(source)
    except gotemplate.TemplateError as exc:
        raise invalid(str(exc), "template") from exc


async def render(inp: PromptInput, *, chat_template: str | None, bos: str, eos: str,
                 jinja: ChatTemplates) -> str:
    """The prompt text for a non-raw request (a Go template renders in a thread, a Jinja one in `jinja`'s
    workers)."""
    messages = ([{"role": "system", "content": inp.system}] if inp.system else []) + \
        [dict(m) for m in inp.turns] + [{"role": "user", "content": inp.prompt}]
    if inp.template is not None:
        return await asyncio.to_thread(execute_go, inp.template, inp, messages)
    if chat_template:
        extra = {} if inp.think is None else {"enable_thinking": bool(inp.think)}
        return await jinja.render(chat_template, messages, bos=bos, eos=eos, **extra)
    return inp.prompt


def execute_go(source: str, inp: PromptInput, messages: list[dict[str, Any]]) -> str:
    """Ollama's template.Execute: fill-in-the-middle, a .Messages template, or a legacy one."""
    template = parse_go_template(source)
    fields = {f.lower() for f in template.fields()}
    if "messages" not in fields and "response" not in fields:
        template = parse_go_template(source + "{{ .Response }}")   # as Ollama's template.Parse does
    think = {"Think": bool(inp.think), "ThinkLevel": inp.think_level, "IsThinkSet": inp.think is not None}
    if inp.prompt and inp.suffix:
        return _execute(template, {"Prompt": inp.prompt, "Suffix": inp.suffix, "Response": "", **think})
    if "messages" in fields:
        return _execute(template, {"System": inp.system, "Response": "", "Tools": [], **think,
                                   "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]})
    if inp.turns:                   # earlier turns (the model's MESSAGEs): one template run per turn
        return _legacy_turns(source, messages, think)
    # A legacy template renders the last turn only up to .Response.
    return _execute(template.cut_after_response(), {"System": inp.system, "Prompt": inp.prompt, "Response": "",
                                                     **think})


def _execute(template: gotemplate.Template, data: dict[str, Any]) -> str:
    try:
        return template.render(data)
    except gotemplate.TemplateError as exc:
        raise invalid(str(exc), "template") from exc
    except RecursionError:
        raise invalid("template: nesting too deep", "template") from None


async def render_chat(messages: list[dict[str, Any]], *, tools: list[dict[str, Any]], go_template: str | None,
                      chat_template: str | None, bos: str, eos: str, think: bool | None, think_level: str,
                      jinja: ChatTemplates) -> str:
    """The prompt for a conversation (Ollama's chat path): the model's Go template, else its
    GGUF chat template, else the contents one per line."""
    if go_template is not None:
        return await asyncio.to_thread(_render_go_chat, go_template, messages, tools, think, think_level)
    if chat_template:
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        if think is not None:
            extra["enable_thinking"] = bool(think)
        return await jinja.render(chat_template, messages, bos=bos, eos=eos, **extra)
    return "\n".join(m["content"] for m in messages)


def _render_go_chat(go_template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                    think: bool | None, think_level: str) -> str:
    think_vars = {"Think": bool(think), "ThinkLevel": think_level, "IsThinkSet": think is not None}
    template = parse_go_template(go_template)
    fields = {f.lower() for f in template.fields()}
    if "messages" in fields:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        go_messages = [{"Role": m["role"], "Content": m["content"], "Thinking": m.get("thinking", ""),
                        "ToolCalls": go_values(m.get("tool_calls", [])), "ToolName": m.get("tool_name", ""),
                        "ToolCallID": m.get("tool_call_id", "")}
                       for m in messages]
        return _execute(template, {"System": system, "Messages": go_messages, "Tools": go_values(tools),
                                   "Response": "", **think_vars})
    return _legacy_turns(go_template, messages, think_vars)


def _legacy_turns(source: str, messages: list[dict[str, Any]], think_vars: dict[str, Any]) -> str:
    """A template without .Messages, run once per (system, prompt, response) turn as Ollama does;
    the last turn stops at .Response."""
    fields = {f.lower() for f in parse_go_template(source).fields()}
    full = parse_go_template(source if "response" in fields else source + "{{ .Response }}")
    out, system, prompt = [], "", None
    for m in messages:
        if m["role"] == "system":
            system = f"{system}\n\n{m['content']}" if system else m["content"]
        elif m["role"] == "user":
            if prompt is not None:
                out.append(_execute(full, {"System": system, "Prompt": prompt, "Response": "", **think_vars}))
                system = ""
            prompt = m["content"]
        elif m["role"] == "assistant":
            out.append(_execute(full, {"System": system, "Prompt": prompt or "", "Response": m["content"],
                                       **think_vars}))
            system, prompt = "", None
    if prompt is not None or system:
        out.append(_execute(full.cut_after_response(), {"System": system, "Prompt": prompt or "", "Response": "",
                                                         **think_vars}))
    return "".join(out)
