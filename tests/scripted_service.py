"""python -m tests.scripted_service: the real service process (its settings, server, drain and signals) over the
scripted engine, for system tests that need processes but not a model's speed. The script comes as JSON in
GENGATE_TEST_SCRIPT (the fields of tests.fake_engine.Script)."""
from __future__ import annotations

import asyncio
import json
import os

from common import logs
from common.settings import load
from service.server import serve
from service.settings import ServiceSettings
from tests.fake_engine import FakeEngine, Script


def main() -> None:
    settings = load(ServiceSettings)
    logs.configure(settings.log_level, settings.log_format)
    engine = FakeEngine()
    engine.script = Script(**json.loads(os.environ.get("GENGATE_TEST_SCRIPT", "{}")))
    asyncio.run(serve(settings, engine))


if __name__ == "__main__":
    main()
