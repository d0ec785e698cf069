# ganforge: `make run` runs the whole pipeline on embedded defaults; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
UV_INSTALL = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt
export DVC_NO_ANALYTICS := 1
# Prefect's ephemeral server needs 10-27 s to start on 2 busy cores; its 20 s default is too tight.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
# No network here but the package registries: telemetry would only log failures.
export PREFECT_SERVER_ANALYTICS_ENABLED := false

# Each step says what it installs and how long it took: pip and uv stay quiet (-q), the steps do not.
STEP = @echo "make install: $(1)"; step_started=$$(date +%s);
DONE = && echo "make install:   done in $$(( $$(date +%s) - step_started )) s"

.PHONY: install install-test run test bench serve stop chromium

# Every version pinned in constraints.txt: the resolver has nothing to search or backtrack.
# torch by pip, which takes a CPU wheel that pip's configuration finds on disk (uv does not look
# there); everything else by uv, which installs in parallel. Compiled to bytecode as pip does: with
# PYTHONDONTWRITEBYTECODE set (as here) nothing else writes .pyc files, and every process would compile its
# imports again (make test 1,005 s instead of 675 s on fresh clones, 2026-12-02). 64 s in all against pip's 135 s.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(call STEP,[1/3] a virtual environment in $(VENV) (a few seconds)) $(PYTHON) -m venv $(VENV) $(DONE)
	$(call STEP,[2/3] torch (CPU) and uv by pip (about a minute)) \
	  $(BIN)/pip install -qq --disable-pip-version-check -c constraints.txt torch uv $(DONE)
	$(call STEP,[3/3] ganforge and its dependencies (constraints.txt) by uv (about a minute)) \
	  $(UV_INSTALL) -e . $(DONE)
	@touch $@
	@echo "make install: $(VENV) is ready (make run: the whole pipeline; make test: the tests)"

# The test extras (pytest, CTGAN and the benchmark tables, ...): `make run` and `make serve` do without them.
$(BIN)/.installed-test: $(BIN)/.installed
	$(call STEP,the test extras: pytest and awscli; ctgan and the benchmark tables (about 20 s)) \
	  $(UV_INSTALL) -e '.[test]' $(DONE)
	@touch $@

# tests/test_card.py opens the report in a real headless browser (Debian's chromium). `make test` installs it
# when missing (apt-get: root, or sudo) and the test fails rather than skips without it
# (GANFORGE_REQUIRE_BROWSER=1, as CI=true does).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "make test: installing chromium for the browser test (apt-get, about a minute)"; \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  { $$SUDO apt-get update -qq >/dev/null && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "make test: could not install chromium (apt-get install chromium, as root): the browser test" \
	         "needs /usr/bin/chromium" >&2; exit 1; }; \
	fi

install: $(BIN)/.installed

install-test: $(BIN)/.installed-test

run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/run.sh

# Every test, the benchmarks' quick mode (tests/test_benchmarks.py) and the browser check included.
test: install-test chromium
	PATH="$(CURDIR)/$(BIN):$$PATH" GANFORGE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install-test
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks

# A local Prefect server, a worker per work pool, the embedded S3 and every deployment, in the background.
serve: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/serve.sh

# Stops what serve, run and hand-run stages started (Prefect server, workers, embedded S3), by their recorded pids.
stop:
	-PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/stop.sh
