# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test-only: databricks-langchain and its Databricks helpers, installed without their declared
# dependencies (unitycatalog-ai pins databricks-sdk<=0.94, databricks-connect and numpy<2, which
# would downgrade what the project runs on); their ordinary dependencies are resolved normally.
CLIENT_TEST_PACKAGES := databricks-langchain==0.21.0 databricks-ai-bridge==0.22.0 databricks-ai-search==0.81 \
	databricks-mcp==0.9.2 databricks-openai==0.18.0 unitycatalog-langchain==0.4.0 unitycatalog-ai==0.4.0 \
	unitycatalog-client==0.4.1 unitycatalog-openai==0.2.0
CLIENT_TEST_DEPS := aiohttp aiohttp-retry cloudpickle deprecation langchain langchain-community \
	langchain-mcp-adapters mcp nest-asyncio openai-agents python-dateutil tabulate tiktoken
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.PHONY: run setup install browser test test-fast fuzz lint bench clean wheel

run: install
	$(BIN)/modelfleet up

setup: install
	$(BIN)/modelfleet setup

install: $(STAMP) node_modules/.installed

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -m pip install --quiet $(CLIENT_TEST_DEPS)
	$(BIN)/python -m pip install --quiet --no-deps $(CLIENT_TEST_PACKAGES)
	touch $(STAMP)

# Exactly the versions package-lock.json pins (as the image does).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch node_modules/.installed

# The wheel carries the templates, static files and the pages' npm files (setup.py copies them in).
wheel: install
	$(BIN)/python -m pip wheel --no-deps --wheel-dir dist .

# The dashboard's browser tests drive Debian's Chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "make: installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

test: install browser
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not e2e"

# The fuzz modules with their full budgets (`make test` runs a tenth: tests.conftest.fuzz_examples);
# MODELFLEET_FUZZ_SCALE=3 make fuzz digs three times deeper.
FUZZ_MODULES := tests/test_fuzz_api.py tests/test_fuzz_gateway.py tests/test_hostile_input.py
fuzz: install
	MODELFLEET_FUZZ_SCALE=$${MODELFLEET_FUZZ_SCALE:-1} $(BIN)/python -m pytest $(FUZZ_MODULES)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) node_modules var build dist

# The benchmarks start `mlflow models serve`, which runs a bare `uvicorn`: the venv's bin goes first on PATH.
# bench_models.py installs Debian's wrk (the load generator) when it is missing.
bench: export PATH := $(abspath $(BIN)):$(PATH)
bench: install
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_faults.py
	$(BIN)/python benchmarks/bench_monitoring.py
	$(BIN)/python benchmarks/bench_dashboard.py
	$(BIN)/python benchmarks/bench_hostile_input.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_full_path.py
	$(BIN)/python benchmarks/bench_ray.py  # needs root (network namespaces): prints a skip line otherwise
