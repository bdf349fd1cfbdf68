# plana-jobs: `make test` is the command CI runs (see README.md and .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY_FILES := jobs tests bench

.PHONY: venv test lint bench clean

$(BIN)/plana-job: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/plana-job

test: venv synapse
	$(BIN)/pytest $(PYTEST_ARGS)

# Synapse (the matrix-room tests' homeserver) in its own virtualenv: its pins must not meet ours.
SYNAPSE_VENV ?= .venv-synapse
SYNAPSE_SPEC ?= matrix-synapse~=1.163
.PHONY: synapse
$(SYNAPSE_VENV)/bin/synapse_homeserver:
	$(PYTHON) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install --quiet '$(SYNAPSE_SPEC)'
	touch $@

synapse: $(SYNAPSE_VENV)/bin/synapse_homeserver

lint: venv
	$(BIN)/ruff check jobs tests bench
	$(BIN)/ruff format --check jobs
	$(BIN)/mypy --strict jobs

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(SYNAPSE_VENV) .pytest_cache .mypy_cache .ruff_cache

# Images: every target of images/Dockerfile via buildx bake; needs a Docker engine.
.PHONY: images demo
images:
	docker buildx bake -f images/docker-bake.hcl $(BAKE_ARGS)

# Provision a demo tenant end to end on local services, twice (the second run: all unchanged).
demo: venv synapse
	$(BIN)/python -m demo
