# The two quick-start commands: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: run test install install-test browser lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"

# Debian's Chromium for the browser tests (Playwright drives it; it downloads nothing).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Set up and run the service on the embedded defaults: SQLite file under var/, the
# built-in mail catcher, the sample articles and a few demo subscribers.
run: install
	$(BIN)/mailer serve --demo

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Set up and run the tests (lint first: a lint failure fails the run).
test: install-test browser lint
	$(BIN)/pytest

bench: install-test
	$(BIN)/python bench/delivery.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache
