# Two commands set up everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
LOCAL := $(CURDIR)/.local
UV := $(LOCAL)/uv/bin/uv
ENV_FILE := $(LOCAL)/env.sh
# Every recipe that touches a service runs with the same environment.
RUN := source $(ENV_FILE) && PATH=$(BIN):$$PATH
DATASET ?= simulated
CUSTOMERS ?= 20000
DAYS ?= 365
SEED ?= 42
BENCH ?=
PYTEST_ARGS ?=

.PHONY: help install services migrate demo test lint bench stop lock collector airflow mlflow-ui sink preview erase docs browser clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(LOCAL)/uv && $(LOCAL)/uv/bin/pip install -q uv==0.13.8

# Bytecode is compiled once at install: PYTHONDONTWRITEBYTECODE may be set, and every
# airflow/dbt subprocess would otherwise recompile its imports (~2x slower start).
$(VENV)/.installed: requirements.lock pyproject.toml | $(UV)
	[ -x $(VENV)/bin/python ] || $(UV) venv -q --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip sync -q --compile-bytecode requirements.lock
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned dependencies

lock: | $(UV) ## recompile requirements.lock from requirements.txt
	$(UV) pip compile -q requirements.txt -o requirements.lock --python-version 3.11

$(ENV_FILE): $(VENV)/.installed warehouse/env.py warehouse/settings.py
	mkdir -p $(LOCAL) && $(BIN)/python -m warehouse.env > $@

services: $(ENV_FILE) ## start the embedded PostgreSQL and create its databases
	$(RUN) python -m warehouse.embedded start

migrate: services ## migrate Airflow's metadata database and the warehouse schemas
	$(RUN) python -m warehouse.migrate
	$(RUN) airflow db migrate > $(LOCAL)/airflow-db-migrate.log 2>&1 || (tail -20 $(LOCAL)/airflow-db-migrate.log; exit 1)

demo: migrate ## set up and run the main job on the embedded default (DATASET=simulated|cdnow)
	$(RUN) python -m demo --dataset $(DATASET) --customers $(CUSTOMERS) --days $(DAYS) --seed $(SEED) $(if $(NO_LIVE),--no-live)

test: migrate browser ## set up and run the test suite (benchmarks excluded)
	$(RUN) python -m pytest $(PYTEST_ARGS)

lint: services ## ruff (lint and format) and sqlfluff (dbt SQL)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(RUN) python -m warehouse.dbt lint

bench: migrate ## run the benchmarks (BENCH=<name> for one), results in .local/bench/
	$(RUN) python -m bench $(BENCH)

airflow: migrate ## start the Airflow services (scheduler, triggerer, dag-processor, UI on 127.0.0.1:8080)
	$(RUN) python -m orchestration.airflow_services start

collector: migrate ## run the event collector in the foreground on 127.0.0.1:8765
	$(RUN) python -m collector

sink: $(ENV_FILE) ## run the local SMTP sink in the foreground (.eml files in .local/outbox)
	$(RUN) python -m harness.smtp_sink

preview: $(ENV_FILE) ## render CAMPAIGN [VARIANT=] [CUSTOMER=] to HTML and text in .local/previews
	$(RUN) python -m campaigns preview $(CAMPAIGN) $(if $(VARIANT),--variant $(VARIANT)) $(if $(CUSTOMER),--customer-id $(CUSTOMER))

erase: migrate ## erase CUSTOMER=<id> everywhere, keeping only a hashed suppression
	$(RUN) python -m campaigns erase --customer-id $(CUSTOMER) --yes

docs: migrate ## build dbt's documentation site (dbt_project/target/static_index.html)
	$(RUN) python -m warehouse.dbt docs

mlflow-ui: migrate ## run the MLflow UI in the foreground on 127.0.0.1:5000
	$(RUN) mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri "$$MLFLOW_TRACKING_URI"

# Debian's Chromium for the email screenshot tests (Playwright's own download needs the internet).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: chromium not installed; the email screenshot test will be skipped"

stop: ## stop every service the commands above started
	-[ -f $(ENV_FILE) ] && $(RUN) python -m orchestration.airflow_services stop
	-[ -f $(ENV_FILE) ] && $(RUN) python -m warehouse.embedded stop

clean: stop ## remove .local (all local data) and .venv
	rm -rf $(LOCAL) $(VENV)
