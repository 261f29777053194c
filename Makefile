# The two quick-start commands: `make serve` and `make test`; CONTRIBUTING.md has the rest.
#
# `make serve` installs what serving needs and nothing else (`pip install -e .`);
# `make test` adds the test extra (pytest, hypothesis, mypy, trustme, ...).
# Both install into .venv: run the commands as `.venv/bin/gloom`, or
# `. .venv/bin/activate` first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: serve test lint typecheck install install-serve install-browser bench bench-quick clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

# The test extra includes the package itself: what serving needs is there too.
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP) $(SERVE_STAMP)

install-serve: $(SERVE_STAMP)

install: $(TEST_STAMP)

# Debian's Chromium and chromedriver for the status-page test (apt, as root).
install-browser:
	bash .ci/install-browser

# The journal of `make serve` lives in data/ of the checkout (git-ignored);
# `make serve JOURNAL=` runs without one (jobs in memory only).
JOURNAL ?= data/journal.db

serve: install-serve
	$(if $(JOURNAL),mkdir -p $(dir $(JOURNAL)))
	$(BIN)/gloomd $(if $(JOURNAL),--journal $(JOURNAL)) $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite runs both too (tests/test_lint.py, tests/test_typing.py).
lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

typecheck: install
	$(BIN)/python -m mypy gloomwire gloomd client/gloom

bench: install
	bash benchmarks/peers.sh

bench-quick: install
	QUICK=1 bash benchmarks/peers.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
