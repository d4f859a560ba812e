"""The README (and the deploy guide) stay true: they list every setting of both processes."""
from __future__ import annotations

import contextlib
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


def test_the_readmes_model_lifecycle_snippet_runs_as_written(real, tmp_path, monkeypatch, capsys):
    """The Models section's Python, run unchanged but for the host, against the real stack."""
    import ollama

    from common import names
    from service.models.store import ModelStore
    from service.settings import ServiceSettings
    from tests.tiny_gguf import write_tiny_llama
    lead = "With the official Python client, unchanged:\n\n```python\n"
    snippet = README[README.index(lead) + len(lead):]
    snippet = snippet[:snippet.index("```")].replace("http://127.0.0.1:11434", real.url)
    store = ModelStore(real.service.store.root)
    added = []                                                           # the session's store, as it was after
    for name in ("gemma3:270m", "all-minilm"):                           # as make setup leaves the store
        installed = ModelStore(ServiceSettings().models).get(names.parse(name))
        if installed is not None and store.get(names.parse(name)) is None:
            store.import_file(name, installed.path)
            added.append(name)
    monkeypatch.chdir(tmp_path)
    write_tiny_llama(tmp_path / "model.gguf", f16=True)                 # the snippet's "./model.gguf"
    client = ollama.Client(host=real.url)
    try:
        exec(compile(snippet, "README.md", "exec"), {})
        vectors = capsys.readouterr().out
        assert vectors.startswith("[[") and vectors.count("],") == 1 and vectors.count(",") > 700   # 2 × 384
        assert "SYSTEM You are a pirate." in client.show("pirate").modelfile
        assert client.show("mine:q4").details.quantization_level == "Q4_K_M"
    finally:
        for name in ("pirate", "mine", "mine:q4", *added):
            with contextlib.suppress(ollama.ResponseError):
                client.delete(name)
