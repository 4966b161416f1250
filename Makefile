# Two entry points (see README): `make lab` and `make test`.
# Each creates the virtual environment .venv if needed and installs exactly the versions in
# the lock (requirements/*.txt, with hashes), so a fresh clone gets the environment the
# tests and the tutorials' stored outputs were made with. `make lock` refreshes the lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# JupyterLab refuses to run as root unless told; root is common in containers.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)
# pip itself is pinned too; uv only resolves the lock (`make lock`), pip installs it.
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
# The lock is resolved for the machines this project runs on (Linux x86_64, CPython 3.11);
# torch's CPU build comes from the wheel on this machine's disk (pip's find-links).
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links /opt/wheels
# Everything pip installs from the lock: hashes checked, nothing resolved, build back ends
# from the lock too (no build isolation, which would fetch the newest setuptools).
PIP_LOCKED := -m pip install --quiet --require-hashes --no-deps -r
PIP_PROJECT := -m pip install --quiet --no-deps --no-build-isolation -e .

.PHONY: lab test test-latest test-oldest lock venv clean fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)

venv: $(BIN)/python

# Each environment is installed once per change of its lock (a stamp file in the venv).
$(VENV)/.installed-test: requirements/test.txt pyproject.toml | $(BIN)/python
	$(BIN)/python $(PIP_LOCKED) requirements/test.txt
	$(BIN)/python $(PIP_PROJECT)
	rm -f $(VENV)/.installed-lab
	touch $@

$(VENV)/.installed-lab: requirements/lab.txt pyproject.toml | $(BIN)/python
	$(BIN)/python $(PIP_LOCKED) requirements/lab.txt
	$(BIN)/python $(PIP_PROJECT)
	touch $@

lab: $(VENV)/.installed-lab
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The newest versions pyproject.toml allows (no lock), in their own environment: what a user
# of `pip install ".[jupyter]"` gets today. Notebooks included.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet --upgrade -c requirements/latest-constraints.txt -e '.[test]'
	.venv-latest/bin/python -m pip list --format=freeze > .venv-latest/versions.txt
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# The oldest versions pyproject.toml allows for the core (numpy, ml_dtypes, scipy, fsspec),
# locked in requirements/oldest.txt, running the core tests (no Jupyter, no notebooks).
CORE_TESTS := tests/test_torch_compat.py tests/test_storages.py tests/test_legacy.py \
	tests/test_unpickler.py tests/test_allowlist.py tests/test_load_options.py \
	tests/test_sparse.py tests/test_verify.py tests/test_refusals.py \
	tests/test_roundtrip_properties.py tests/test_sources.py
test-oldest:
	rm -rf .venv-oldest
	$(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet pip==$(PIP_VERSION)
	.venv-oldest/bin/python $(PIP_LOCKED) requirements/oldest.txt
	.venv-oldest/bin/python $(PIP_PROJECT)
	.venv-oldest/bin/python -m pytest -p no:cacheprovider -o addopts="-ra --strict-markers" \
		$(CORE_TESTS) $(PYTEST_ARGS)

# Re-resolve the locks from pyproject.toml (newest versions its ranges allow; dask and
# distributed land on one release because distributed pins dask exactly). Review the diff,
# run `make test`, regenerate the notebooks if outputs moved, and commit.
lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra test $(LOCK_TARGET) --generate-hashes \
		--no-emit-package nbckpt --upgrade --quiet -o requirements/test.txt
	$(BIN)/uv pip compile pyproject.toml --extra lab $(LOCK_TARGET) --generate-hashes \
		--no-emit-package nbckpt --upgrade --quiet -c requirements/test.txt -o requirements/lab.txt
	$(BIN)/uv pip compile pyproject.toml requirements/oldest-tools.in --extra sparse --extra remote \
		--resolution lowest-direct $(LOCK_TARGET) --generate-hashes --no-emit-package nbckpt \
		--upgrade --quiet -o requirements/oldest.txt

# Fuzz the loaders for a while (scripts/fuzz.py): make fuzz FUZZ_ARGS="--minutes 10".
# Findings (inputs that crash or raise anything but an nbckpt error) go to fuzz-findings/.
fuzz: $(VENV)/.installed-test
	$(BIN)/python scripts/fuzz.py $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest build dist *.egg-info .pytest_cache .hypothesis
