# The two commands of the README. Each sets up everything it needs on a fresh Python 3.11 machine.
#   make run   ARGS="dataset.limit=4"   the default job (real models, HumanEval slice, Parquet out)
#   make test                           the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.speccore-installed

.PHONY: install browser run test clean

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

# The report test renders HTML in Debian's chromium; install it where we can (root), else say why not.
browser:
	@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null); } || echo "note: no /usr/bin/chromium (needs root to install); the report test skips outside CI"

test: $(STAMP) browser
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
