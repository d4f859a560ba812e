"""The README (and the deploy guide) stay true: they list every setting of both processes."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.settings import GatewaySettings
from service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()


def test_readme_lists_every_setting():
    for cls in (ServiceSettings, GatewaySettings):
        for field in dataclasses.fields(cls):
            assert f"`{field.metadata['env']}`" in README, field.metadata["env"]
            assert f"--{field.name.replace('_', '-')}`" in README, field.name
            assert f"| `{field.metadata['env']}` |" in DEPLOY, field.metadata["env"]     # its operators' table too


def test_readme_gives_the_two_commands():
    assert "make run" in README and "make test" in README
