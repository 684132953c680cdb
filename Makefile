# The front door: `make help` lists the targets. Targets are thin calls into the real
# tools, so people and CI run the same commands.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements/dev.txt services/*/pyproject.toml sdk/python/pyproject.toml | cksum | cut -d' ' -f1)
PACKAGES := services/shared services/auth_api services/rooms_api services/ws_relay services/devstack sdk/python
# checkov lives in its own virtual environment: it pulls a python-hcl2 fork that would shadow hcl2.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_REQUIREMENTS := terraform/scripts/checkov-requirements.txt
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(shell cksum < $(CHECKOV_REQUIREMENTS) | cut -d' ' -f1)
TF_CHECK := terraform/scripts/check.sh

.DEFAULT_GOAL := help
.PHONY: help install tools dev demo test lint format typecheck unit integration e2e coverage schema lock clean
.PHONY: terraform-check terraform-fmt terraform-validate terraform-test terraform-checkov checkov monitoring-check
.PHONY: deploy destroy ansible-check bench bench-quick

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): requirements/dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation $(addprefix -e ,$(PACKAGES))
	touch $@

install: $(STAMP) ## Create the virtual environment with pinned dependencies

tools: ## Install the host tools the full suite uses (apt packages, as root or with sudo); `python3 tests/tools.py status` lists them
	$(PYTHON) tests/tools.py install

dev: $(STAMP) ## Run the whole stack locally: APIs on :8001, relay on :8080, AWS emulator on :4566
	$(BIN)/python -m devstack

demo: $(STAMP) ## A worker and a client (the signaling CLI) move a file over WebRTC via `make dev` (or a stack of its own); the browser page: http://127.0.0.1:8003/ under `make dev`
	$(BIN)/python sdk/python/examples/demo.py

# The 25 slowest tests are printed at the end, and one line per missing host tool.
test: lint typecheck terraform-check ## Lint, type-check, check Terraform and run every test (unit, integration, end-to-end)
	$(BIN)/pytest --durations=25

unit: $(STAMP) ## Unit tests only (no AWS emulator or services; loopback sockets at most)
	$(BIN)/pytest tests/unit

integration: $(STAMP) ## Integration tests against the embedded AWS emulator
	$(BIN)/pytest tests/integration

# The relay and the data layer, tested by the unit tier alone (no sockets but loopback, no emulator).
COVERED := services/ws_relay/ws_relay,services/shared/signaling_shared/dynamo
coverage: $(STAMP) ## Unit-tier line coverage of the relay and the data layer; fails under 80 %
	COVERAGE_FILE=$(VENV)/.coverage $(BIN)/coverage run --source=$(COVERED) -m pytest -q -p no:randomly tests/unit
	COVERAGE_FILE=$(VENV)/.coverage $(BIN)/coverage report --skip-covered --fail-under=80

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

monitoring-check: ## promtool and amtool: Prometheus and Alertmanager configs, alert rules and their unit tests (make test runs these too)
	cd monitoring && promtool check config prometheus.yml && promtool check rules rules/*.yml && promtool test rules tests/*.yml
	amtool check-config monitoring/alertmanager.yml

# make bench: matplotlib and py-spy in the venv, PeerJS server from npm (the lock), then the run.
BENCH_STAMP := $(VENV)/.bench-$(shell cksum < requirements/bench.txt | cut -d' ' -f1)
PEERJS_STAMP := bench/peerjs/node_modules/.installed

$(BENCH_STAMP): requirements/bench.txt $(STAMP)
	rm -f $(VENV)/.bench-*
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/bench.txt
	touch $@

$(PEERJS_STAMP): bench/peerjs/package.json bench/peerjs/package-lock.json
	cd bench/peerjs && npm ci --no-audit --no-fund
	touch $@

bench: $(BENCH_STAMP) $(PEERJS_STAMP) ## Benchmarks (minutes; not in make test): ws-relay vs PeerJS vs a null relay -> bench/results, docs/benchmarks.md
	$(BIN)/python -m bench.run

bench-quick: $(BENCH_STAMP) $(PEERJS_STAMP) ## Every benchmark scenario at tiny sizes (a minute or two) -> bench/results/quick/
	$(BIN)/python -m bench.run --quick

ENV ?=
DEPLOY := $(BIN)/python ansible/scripts/deploy.py
DEPLOY_FLAGS := $(if $(filter 1 yes true,$(AUTO_APPROVE)),--auto-approve,)

deploy: $(STAMP) ## make deploy ENV=local|dev|prod: Terraform, inventory, playbook, smoke test (local: emulator + check mode here)
	@test -n "$(ENV)" || { echo "make deploy ENV=local|dev|prod [AUTO_APPROVE=1]"; exit 2; }
	$(DEPLOY) deploy $(ENV) $(DEPLOY_FLAGS)

destroy: $(STAMP) ## make destroy ENV=dev|prod: terraform destroy (asks first unless AUTO_APPROVE=1)
	@test -n "$(ENV)" || { echo "make destroy ENV=local|dev|prod [AUTO_APPROVE=1]"; exit 2; }
	$(DEPLOY) destroy $(ENV) $(DEPLOY_FLAGS)

ansible-check: $(STAMP) ## ansible-lint (production), yamllint, syntax check, check mode here, rendered configs checked (make test runs these too)
	$(BIN)/pytest tests/integration/test_ansible.py

terraform-check: terraform-fmt terraform-validate terraform-test terraform-checkov ## Every static Terraform check (the emulator apply is a pytest integration test)

terraform-fmt: ## terraform fmt -check over terraform/
	$(TF_CHECK) fmt

terraform-validate: ## init -backend=false + validate every Terraform module, example and environment
	$(TF_CHECK) validate

terraform-test: ## terraform test in every module (mocked AWS provider)
	$(TF_CHECK) test

$(CHECKOV_STAMP): $(CHECKOV_REQUIREMENTS)
	rm -f $(CHECKOV_VENV)/.installed-*
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(CHECKOV_REQUIREMENTS)
	touch $@

# Like the other Terraform checks, skipped (not installed) where terraform is missing, unless required.
terraform-checkov: ## checkov over terraform/ (zero failed checks; skips sit next to their resource)
	@if command -v terraform >/dev/null 2>&1 || [ "$${SIGNALING_REQUIRE_TERRAFORM:-}" = 1 ] || [ "$${SIGNALING_REQUIRE_TOOLS:-}" = 1 ]; then \
		$(MAKE) --no-print-directory checkov; \
	else \
		echo "SKIPPED terraform checkov: missing tool terraform (install it by hand: https://developer.hashicorp.com/terraform/install)"; \
	fi

checkov: $(CHECKOV_STAMP)
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(TF_CHECK) checkov

lock: ## Re-pin requirements/*.txt from requirements/*.in
	cd requirements && ../$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links -o runtime.txt runtime.in
	cd requirements && ../$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links -o dev.txt dev.in

clean: ## Remove the virtual environments and caches
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache terraform/.cache
