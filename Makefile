# The two quick-start commands: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: run test install install-test system-deps email-check lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"

# Debian's packages the tests use as real peers: Chromium for the browser tests
# (Playwright drives it; it downloads nothing) and Postfix, a real relay that pipelines,
# limits connections and rejects recipients by access map (the tests start private
# instances on loopback; the system one is not needed).
TEST_PACKAGES = chromium:chromium postfix:postfix
system-deps:
	@missing=""; for pair in $(TEST_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair%%:*} ] || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Set up and run the service on the embedded defaults: SQLite file under var/, the
# built-in mail catcher and, in a new database only, the sample articles and three demo
# readers (later starts leave the list alone). Other commands: .venv/bin/mailer --help.
run: install
	$(BIN)/mailer serve --demo

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Set up and run the tests (lint first: a lint failure fails the run).
# The caniemail checker that tests/test_email_layout.py runs on node (skipped without node).
email-check:
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix tools/email-check --no-audit --no-fund >/dev/null; fi

test: install-test system-deps email-check lint
	$(BIN)/pytest

bench: install-test
	$(BIN)/python bench/delivery.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache
