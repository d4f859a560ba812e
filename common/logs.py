"""Logging for both processes: text or JSON lines, each with the request id of the request it belongs to.

The id lives in a context variable, set once per request (the gateway's observe middleware, the service's
interceptor); the record factory that `tag_records` installs (each process's app or server builder calls it) adds
it to every record, whatever handler formats it, so no log call has to pass it.
"""
from __future__ import annotations

import contextvars
import json
import logging
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def tag_records() -> None:
    """From now on every log record carries the request id of the context it was made in (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "tags_request_ids", False):
        return

    def record(*args, **kwargs) -> logging.LogRecord:
        made = factory(*args, **kwargs)
        made.request_id = request_id.get()
        return made
    record.tags_request_ids = True          # type: ignore[attr-defined]
    logging.setLogRecordFactory(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
                 "request_id": getattr(record, "request_id", "-")}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """fmt: "text" or "json"."""
    tag_records()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
