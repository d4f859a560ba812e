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
    modules = loaded_after("import cli.main")
    assert "llama_cpp" not in modules and not {m for m in modules if m.startswith("service")}
    assert not {m for m in modules if m.startswith("gateway")}


def test_the_service_does_not_import_the_gateway():
    modules = loaded_after("import service.server, service.__main__")
    assert not {m for m in modules if m == "gateway" or m.startswith("gateway.")}


# The service's packages, from the top down: a module imports from its own package and from those below it only.
SERVICE_LAYERS = ["api", "generation", "engines", "models", "chat"]
SERVICE_BASE = {"errors", "settings", "metrics", "cache", "workers"}      # beneath every package
SERVICE_ROOTS = {"server", "store_cli", "__main__"}                        # the composition roots, above all


def _service_imports():
    import ast
    for path in sorted((ROOT / "service").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service"):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("service")]
            for name in names:
                yield parts, name.split(".")


def _layer(parts) -> int:
    if len(parts) < 2:
        return -1
    head = parts[1]
    if head in SERVICE_ROOTS:
        return -1
    if head in SERVICE_BASE:
        return len(SERVICE_LAYERS)
    return SERVICE_LAYERS.index(head)


def test_the_service_packages_import_only_downwards():
    upward = []
    for importer, imported in _service_imports():
        if len(imported) < 2 or imported[1] in ("__init__",):
            continue
        if _layer(importer) > _layer(imported) or (imported[1] in SERVICE_ROOTS and importer[1] not in SERVICE_ROOTS):
            upward.append(f"{'.'.join(importer)} imports {'.'.join(imported[:3])}")
    assert not upward
