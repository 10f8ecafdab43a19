# The two commands: `make run` and `make test`. Both create .venv and install into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test packages lint typecheck openapi bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/debugregd serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The Debian packages the tests drive (browsers, gcc, gdb, perf, promtool): installed as root,
# else one apt-get line to run.
packages:
	scripts/debian-packages

test: packages lint typecheck
	$(BIN)/pytest

openapi: $(STAMP)
	$(BIN)/debugregd openapi > openapi.json

bench: $(STAMP)
	$(BIN)/python bench/core.py --json
	$(BIN)/python bench/http.py --json
	$(BIN)/python bench/journal.py --json
	$(BIN)/python bench/arming.py --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
