"""Models' Jinja chat templates (GGUF `tokenizer.chat_template`), rendered sandboxed in worker processes.

A chat template comes with a model file, and anyone who may create a model may write one: a loop over
`range(100000)` twice, or `'{:>1073741824}'.format('a')`, costs unbounded time or memory. So templates render in
the sandboxed Jinja environment (CVE-2024-34359) inside worker processes (service.workers): each render is capped
at RENDER_SECONDS, its worker at RENDER_MEMORY_BYTES of address space, and its output at MAX_OUTPUT characters; a
render over a limit, or one whose request went away, kills its worker. A pool of them serves the service.
"""
from __future__ import annotations

import datetime as dt
import functools
import sys
from typing import Any

from service import workers
from service.errors import GenerateError, Kind

RENDER_SECONDS = 5.0                 # one render
RENDER_MEMORY_BYTES = 512 << 20      # a worker's address space, over what its code takes
MAX_OUTPUT = 16 << 20                # characters a render may produce (as Go templates)
MAX_LINE = 64 << 20                  # a request or reply line between the service and a worker


class TemplateLimit(GenerateError):
    """A render over one of the limits: the template's fault, whoever sent the request."""


# -- in the worker ---------------------------------------------------------------------------------------
def _raise_exception(message: str) -> None:
    import jinja2
    raise jinja2.exceptions.TemplateError(message)


@functools.lru_cache(maxsize=16)
def _template(source: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
    return env.from_string(source)


def _render(request: dict[str, Any]) -> dict[str, Any]:
    import jinja2

    try:
        text = _template(request["source"]).render(**request["variables"])
    except jinja2.exceptions.SecurityError as exc:
        return {"error": f"chat template rejected by the sandbox: {exc}"}
    except jinja2.exceptions.TemplateError as exc:
        return {"error": f"chat template error: {exc}"}
    except MemoryError:
        raise                                     # the worker is spent (service.workers)
    except (RecursionError, OverflowError) as exc:
        return {"error": f"chat template error: {exc}", "limit": True}
    except Exception as exc:  # noqa: BLE001   a template's own code failed (a type error, a bad index)
        return {"error": f"chat template error: {type(exc).__name__}: {exc}"}
    if len(text) > MAX_OUTPUT:
        return {"error": f"chat template: output exceeds {MAX_OUTPUT} characters", "limit": True}
    return {"text": text}


def main() -> None:
    """`python -m service.chat.jinja MEMORY_BYTES`: renders ({"source", "variables"} → {"text"} or
    {"error"}), one at a time."""
    import jinja2.sandbox  # noqa: F401   loaded before the cap

    workers.serve(_render, int(sys.argv[1]))


# -- in the service ------------------------------------------------------------------------------------
class ChatTemplates:
    """The service's pool of render workers."""

    def __init__(self, size: int = 2, timeout: float = RENDER_SECONDS, memory_bytes: int = RENDER_MEMORY_BYTES):
        self._workers = workers.WorkerPool("service.chat.jinja", size=size, timeout=timeout,
                                           memory_bytes=memory_bytes, line_limit=MAX_LINE)

    @property
    def pids(self) -> list[int]:
        return self._workers.pids

    async def render(self, source: str, messages: list[dict[str, Any]], *, bos: str, eos: str,
                     **extra: Any) -> str:
        """The template rendered for `messages`; GenerateError INTERNAL for the template's own errors,
        TemplateLimit (INTERNAL) when it runs over a limit."""
        variables = {"messages": messages, "add_generation_prompt": True, "bos_token": bos, "eos_token": eos,
                     **extra}
        try:
            out = await self._workers.call({"source": source, "variables": variables})
        except workers.WorkerTimeout:
            raise TemplateLimit(Kind.INTERNAL, "chat template: rendering took longer than the limit of "
                                f"{self._workers.timeout:g} s") from None
        except workers.WorkerError:
            raise TemplateLimit(Kind.INTERNAL, "chat template: rendering needed more memory than the limit of "
                                f"{self._workers.memory_bytes >> 20} MiB") from None
        if "error" in out:
            raise (TemplateLimit if out.get("limit") else GenerateError)(Kind.INTERNAL, out["error"])
        return out["text"]

    async def close(self) -> None:
        await self._workers.close()


if __name__ == "__main__":
    main()
