# ganforge: `make run` runs the whole pipeline on embedded defaults; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
UV_INSTALL = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt
export DVC_NO_ANALYTICS := 1
# Prefect's ephemeral server needs 11-17 s to start on 2 busy cores; its 20 s default is too tight.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
# No network here but the package registries: telemetry would only log failures.
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install install-test run test bench clean-s3 serve stop

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# Every version pinned in constraints.txt: the resolver has nothing to search or backtrack.
	# torch by pip, which takes a CPU wheel that pip's configuration finds on disk (uv does not look
	# there); everything else by uv, which installs in parallel. Compiled to bytecode as pip does: with
	# PYTHONDONTWRITEBYTECODE set (as here) nothing else writes .pyc files, and every process would compile its
	# imports again (make test 958 s instead of about 650). 64 s in all against pip's 135 s.
	$(BIN)/pip install -qq --disable-pip-version-check -c constraints.txt torch uv
	$(UV_INSTALL) -e .
	touch $@

# The test extras (pytest, CTGAN and the benchmark tables, ...): `make run` and `make serve` do without them.
$(BIN)/.installed-test: $(BIN)/.installed
	$(UV_INSTALL) -e '.[test]'
	touch $@

install: $(BIN)/.installed

install-test: $(BIN)/.installed-test

run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/run.sh

test: install-test
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install-test
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks

# A local Prefect server, a worker per work pool, the embedded S3 and every deployment, in the background.
serve: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/serve.sh

# Stops what serve, run and hand-run stages started (Prefect server, workers, embedded S3), by their recorded pids.
stop:
	-PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/stop.sh
