# Two commands: `make demo` and `make test`. Each sets up its own .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# three.js for the browser showroom (/showroom/), pinned with the JavaScript SDK's dev tools.
SDK_MODULES := sdk/js/node_modules/.package-lock.json

$(SDK_MODULES): sdk/js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd sdk/js && npm ci --no-audit --no-fund; \
	else echo "npm not found: the browser showroom needs three.js (npm ci in sdk/js)"; fi

demo: $(STAMP) $(SDK_MODULES)
	$(BIN)/python -m worldflow.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) $(SDK_MODULES)
	$(BIN)/python -m bench

serve: $(STAMP)
	$(BIN)/worldflow serve

clean:
	rm -rf $(VENV) .worldflow .pytest_cache .mypy_cache .ruff_cache
