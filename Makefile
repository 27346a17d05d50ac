# The two commands of the README. Each sets up everything it needs on a fresh Python 3.11 machine.
#   make run   ARGS="dataset.limit=4"   the default job (real models, HumanEval slice, Parquet out)
#   make test                           the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.speccore-installed

.PHONY: install run test clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, alone: 2.13.0 resolves to the CPU build on this disk; a later range it satisfies pulls nothing
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,data,dask,ray]'  # the runner tests need both extras
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m flows.generate $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
