# Two entry points: `make repro` (set up + run the whole pipeline) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: setup data repro test test-fast ui server

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

data: setup
	dvc pull data.dvc

repro: data
	dvc repro

test-fast: data
	python -m pytest -m "not slow and not server"   # the edit-test loop: no pipeline runs, no server

test: data
	python -m pytest -m "not server"
	python -m pytest -m server    # real PostgreSQL + mlflow server (scripts/tracking-server)

ui: setup
	@echo "open http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"
	mlflow ui --backend-store-uri sqlite:///mlflow.db --workers 1

server: setup
	scripts/tracking-server
