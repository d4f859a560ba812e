"""The house's shape: each process depends on `common` and the contract, never on the other process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_gateway_loads_no_model_code_and_nothing_of_the_service():
    modules = loaded_after("import gateway.app, gateway.__main__")
    assert "llama_cpp" not in modules and "numpy" not in modules and "jinja2" not in modules
    assert not {m for m in modules if m == "service" or m.startswith("service.")}


def test_the_cli_is_a_client_of_the_service_not_a_part_of_it():
    modules = loaded_after("import cli")
    assert "llama_cpp" not in modules and not {m for m in modules if m.startswith("service")}
    assert not {m for m in modules if m.startswith("gateway")}


def test_the_service_does_not_import_the_gateway():
    modules = loaded_after("import service.server, service.__main__")
    assert not {m for m in modules if m == "gateway" or m.startswith("gateway.")}
