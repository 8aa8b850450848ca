# The two commands: `make serve` (set up, then serve the embedded default) and
# `make test` (set up everything from nothing, then run the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
# torch==2.13.0 resolves to the local CPU wheel here; a bare `torch` pulls GBs of CUDA.
TORCH_SPEC ?= torch==2.13.0
# The Triton the suite is known to pass with (its interpreter and the ahead-of-time compile
# check use Triton's internals; 3.6, the GPU machines' version, passes too).
TRITON_SPEC ?= triton==3.9.0
HOST ?= 127.0.0.1
PORT ?= 8080
ARGS ?=

.PHONY: serve test setup setup-test client browser bench clean

serve: setup client
	$(VENV)/bin/longlive serve --host $(HOST) --port $(PORT) $(ARGS)

test: setup-test client browser
	LONGLIVE_REQUIRE_BROWSER=1 $(PY) -m pytest $(ARGS)

bench: setup
	$(VENV)/bin/longlive bench $(ARGS)

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]' "$(TRITON_SPEC)"
	touch $@

# @msgpack/msgpack for the browser, from the npm registry, copied to client/vendor/
client: client/vendor/msgpack/index.mjs
client/vendor/msgpack/index.mjs: client/package.json
	cd client && npm install --no-audit --no-fund --silent
	rm -rf client/vendor/msgpack && mkdir -p client/vendor
	cp -r client/node_modules/@msgpack/msgpack/dist.esm client/vendor/msgpack
	touch $@

# Debian's chromium for the browser tests (playwright's own download does not work here)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf $(VENV) client/node_modules client/vendor .pytest_cache
