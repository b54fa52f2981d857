# The two commands: `make up` runs the product, `make test` runs the whole test suite.
# Both create the virtualenv in .venv on first use; only Python 3.11+ and make are needed.
# The virtualenv also gets the `assure` CI client from cli/ (editable), so a checkout has the
# command at hand; tests/test_cli.py installs it again into a virtualenv of its own, as CI would.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test

$(STAMP): pyproject.toml cli/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "AssureAgent needs Python 3.11 or newer; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' -e ./cli
	@touch $(STAMP)

up: $(STAMP)
	$(BIN)/python manage.py up

# Fixed keys only for the test run: settings demand SECRET_KEY and ASSURE_SECRET_KEYS whenever
# DATABASE_URL is set.
# The tests' fakes listen on 127.0.0.1, which a deployment's egress policy refuses by default.
test: $(STAMP)
	SECRET_KEY="$${SECRET_KEY:-insecure-key-for-the-test-suite-only}" \
	ASSURE_SECRET_KEYS="$${ASSURE_SECRET_KEYS:-aW5zZWN1cmUtdGVzdC1zdWl0ZS1vbmx5LWtleS0wMDA=}" \
	EGRESS_ALLOW="$${EGRESS_ALLOW-loopback,private}" $(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)
