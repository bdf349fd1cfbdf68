# plana-jobs: `make test` is the command CI runs (see README.md and .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY_FILES := jobs tests bench
DOCKER ?= docker

.DEFAULT_GOAL := help
.PHONY: help venv test lint bench clean

help: ## list the targets
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  make %-9s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/plana-job: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# setuptools notes every editable install ("Editable installation.", informational only).
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/plana-job ## .venv with the package and its test/dev extras

# Two workers, one test module each at a time (--dist loadfile: a module's fixtures and its
# order stay as they are); every test names its own databases, keys and ports, so modules run
# side by side as jobs of different tenants do. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: venv synapse lint-tools ## run the test suite (PYTEST_ARGS=... passed to pytest)
	$(BIN)/pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# Real-Odoo test mode (README.md, "Real-Odoo test mode"): the same suite, and the tests written
# against tests/support/odoo_target.py drive real Odoo 17/18 instead of the stand-in. Checked first,
# before building anything: without an Odoo there is nothing to run.
.PHONY: test-odoo
test-odoo: ## run the test suite against real Odoo (PLANA_TEST_ODOO17_BIN, ..._18_BIN)
	@test -n "$$PLANA_TEST_ODOO17_BIN$$PLANA_TEST_ODOO18_BIN" || { \
	  echo "make test-odoo: needs PLANA_TEST_ODOO17_BIN and/or PLANA_TEST_ODOO18_BIN (with \
	their PLANA_TEST_ODOO17_ADDONS / PLANA_TEST_ODOO18_ADDONS), see README.md" >&2; exit 2; }
	@$(MAKE) --no-print-directory --silent venv synapse lint-tools
	@$(BIN)/python -m tests.support.odoo_target --require-real
	$(BIN)/pytest $(PYTEST_ARGS)

# Synapse (the matrix-room tests' homeserver) in its own virtualenv: its pins must not meet ours.
SYNAPSE_VENV ?= .venv-synapse
SYNAPSE_SPEC ?= matrix-synapse~=1.163
.PHONY: synapse
$(SYNAPSE_VENV)/bin/synapse_homeserver:
	$(PYTHON) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install --quiet '$(SYNAPSE_SPEC)'
	touch $@

synapse: $(SYNAPSE_VENV)/bin/synapse_homeserver ## Synapse in its own virtualenv

# import-linter in its own virtualenv too: it pulls in rich, and structlog (which every job
# imports) loads rich whenever it is installed, ~40 ms more at each job's start in the suite and
# the bench. It reads the package's sources without importing them (PYTHONPATH=.).
LINT_VENV ?= .venv-lint
IMPORT_LINTER_SPEC ?= import-linter~=2.17
.PHONY: lint-tools
$(LINT_VENV)/bin/lint-imports:
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet '$(IMPORT_LINTER_SPEC)'
	touch $@

lint-tools: $(LINT_VENV)/bin/lint-imports ## import-linter in its own virtualenv

lint: venv lint-tools ## ruff, mypy --strict and the package's import layers (lint-imports)
	$(BIN)/ruff check jobs tests bench demo
	$(BIN)/ruff format --check jobs demo
	$(BIN)/mypy --strict jobs demo tests
	PYTHONPATH=. $(LINT_VENV)/bin/lint-imports --no-cache

bench: venv ## measure each job against the bare operation (BENCH_ARGS=--readme: into README)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The README's configuration table is generated from the click commands (jobs/reference.py).
.PHONY: docs
docs: venv ## regenerate the README's configuration table from the click commands
	$(BIN)/python -m jobs.reference --write README.md

clean: ## remove the virtualenvs, caches and build by-products
	rm -rf $(VENV) $(SYNAPSE_VENV) $(LINT_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build

# Images: every target of images/Dockerfile via buildx bake; needs a Docker engine.
.PHONY: images demo
images: ## build every image with docker buildx bake (BAKE_ARGS=...)
	@$(DOCKER) buildx version >/dev/null 2>&1 || { \
	  echo "make images: needs Docker with the buildx plugin ('$(DOCKER) buildx version' fails)" >&2; \
	  exit 1; }
	$(DOCKER) buildx bake -f images/docker-bake.hcl $(BAKE_ARGS)

# Provision a demo tenant end to end on local services, twice (the second run: all unchanged).
demo: venv synapse ## provision a demo tenant on local services, twice
	$(BIN)/python -m demo
