# Two commands for a new user: `make demo` (set up, train, bake, run the agent) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch these machines carry on disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: setup demo test lint broker clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m demo.run

# The tests start a real mosquitto on a free loopback port; install it when it is missing.
broker:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
	  echo "installing mosquitto (apt-get)"; \
	  { apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; } || \
	  { echo "could not install mosquitto; install it with your package manager and re-run"; exit 1; }; }

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# pytest exits 5 when it collected no test: that must fail, not pass.
test: setup broker lint
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
