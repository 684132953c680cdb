# The front door: `make help` lists the targets. Targets are thin calls into the real
# tools, so people and CI run the same commands.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements/dev.txt services/*/pyproject.toml | cksum | cut -d' ' -f1)
PACKAGES := services/shared services/auth_api services/rooms_api services/ws_relay services/devstack

.DEFAULT_GOAL := help
.PHONY: help install dev test lint format typecheck unit integration e2e schema lock clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements/dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation $(addprefix -e ,$(PACKAGES))
	touch $@

install: $(STAMP) ## Create the virtual environment with pinned dependencies

dev: $(STAMP) ## Run the whole stack locally: APIs on :8001, relay on :8080, AWS emulator on :4566
	$(BIN)/python -m devstack

test: lint typecheck ## Lint, type-check and run every test (unit, integration, end-to-end)
	$(BIN)/pytest

unit: $(STAMP) ## Unit tests only (no network)
	$(BIN)/pytest tests/unit

integration: $(STAMP) ## Integration tests against the embedded AWS emulator
	$(BIN)/pytest tests/integration

e2e: $(STAMP) ## End-to-end WebRTC tests
	$(BIN)/pytest tests/e2e

lint: $(STAMP) ## ruff format --check and ruff check
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP) ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP) ## mypy --strict on the services and tests
	$(BIN)/mypy

schema: $(STAMP) ## Regenerate docs/protocol.schema.json from the relay's message models
	$(BIN)/python -m ws_relay.schema

lock: ## Re-pin requirements/*.txt from requirements/*.in
	cd requirements && ../$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links -o runtime.txt runtime.in
	cd requirements && ../$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links -o dev.txt dev.in

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
