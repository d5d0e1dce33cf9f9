# Two commands for a new user: `make demo` (set up, train, bake, run the agent) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, named with its index: a bare `torch` from PyPI is a multi-GB CUDA build. Where the index
# cannot be reached, pip's configured local wheels (find-links) serve the same file.
TORCH := torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PIP_VERSION := pip==26.3
# Exact versions of every package (see constraints.txt); `make lock` rewrites it from a working venv.
CONSTRAINTS := constraints.txt
PYTEST := $(PY) -m pytest --durations=15

.PHONY: setup demo test test-slow lint broker lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP_VERSION)
	$(PY) -m pip install --quiet $(TORCH) --extra-index-url $(TORCH_INDEX)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

lock: setup
	{ sed -n '1,2p' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | sort -f; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

demo: setup
	$(PY) -m demo.run

# The tests start a real mosquitto on a free loopback port (and make throw-away TLS certificates with openssl);
# install them when they are missing.
broker:
	@{ command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } && command -v openssl >/dev/null || { \
	  echo "installing mosquitto and openssl (apt-get)"; \
	  { apt-get update -qq && apt-get install -y -qq mosquitto openssl >/dev/null; } || \
	  { echo "could not install mosquitto/openssl; install them with your package manager and re-run"; exit 1; }; }

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# pytest exits 5 when it collected no test: that must fail, not pass. `make test` is the fast suite; the full
# bake matrix and other long cases are marked slow and run by `make test-slow` (CI runs both).
test: setup broker lint
	$(PYTEST) -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-slow: setup broker
	$(PYTEST) -m slow; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no slow tests"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
