# The two quick-start commands: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: run test test-sqlite postgres install install-test lock system-deps email-check lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The dependencies come from the lock files, every version pinned and every file checked
# against its hash; then mailer itself, without dependencies (they are all in the lock).
install: $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements-test.lock
	$(BIN)/pip install -q --no-deps -e .

# Rewrite both lock files from pyproject.toml (after editing its dependencies; commit all
# three). Versions already locked are kept where they still fit; `make lock UPGRADE=1`
# moves every package to its newest release. Linux, Python 3.11, with hashes.
UV_VERSION = 0.13.9
LOCK = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes \
	--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: $(BIN)/python
	$(BIN)/pip install -q uv==$(UV_VERSION)
	$(LOCK) --output-file requirements.lock
	$(LOCK) --extra test --output-file requirements-test.lock

# Debian's packages the tests use as real peers: Chromium for the browser tests
# (Playwright drives it; it downloads nothing), Postfix, a real relay that pipelines,
# limits connections, rejects recipients by access map and writes bounces, Dovecot, the
# IMAP server holding the bounce mailbox (dovecot-imapd brings dovecot-core), and Perl's
# Mail::DKIM, a second DKIM verifier, with CryptX, whose Ed25519 the tests give Debian 12's
# Mail::DKIM (both looked for by the first one's command, dkimproxy-verify). The tests
# start private instances on loopback; the system ones are not needed.
TEST_PACKAGES = chromium:chromium postfix:postfix dovecot:dovecot-imapd \
	dkimproxy-verify:libmail-dkim-perl dkimproxy-verify:libcryptx-perl
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

# The SQLite half of the tests alone (no PostgreSQL needed).
test-sqlite: install-test system-deps email-check lint
	$(BIN)/pytest -k "not postgresql"

# A local PostgreSQL for the tests (Debian/Ubuntu): installed, started, trust auth on loopback.
postgres:
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	command -v pg_ctlcluster >/dev/null 2>&1 || { $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; \
	v=$$(ls /etc/postgresql | sort -V | tail -1); \
	hba=/etc/postgresql/$$v/main/pg_hba.conf; \
	grep -q '^host all all 127.0.0.1/32 trust' $$hba || \
	  $$SUDO sed -i '1i host all all 127.0.0.1/32 trust' $$hba; \
	$$SUDO pg_ctlcluster --skip-systemctl-redirect $$v main start 2>/dev/null || \
	  $$SUDO pg_ctlcluster --skip-systemctl-redirect $$v main reload

bench: install-test
	$(BIN)/python bench/delivery.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache
