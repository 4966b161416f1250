# Two entry points (see README): `make lab` and `make test`.
# Each creates the virtual environment .venv if needed and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# JupyterLab refuses to run as root unless told; root is common in containers.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test venv clean fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

lab: venv
	$(BIN)/python -m pip install --quiet -e '.[lab]'
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

test: venv
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Fuzz the loaders for a while (scripts/fuzz.py): make fuzz FUZZ_ARGS="--minutes 10".
# Findings (inputs that crash or raise anything but an nbckpt error) go to fuzz-findings/.
fuzz: venv
	$(BIN)/python -m pip install --quiet -e '.[sparse]'
	$(BIN)/python scripts/fuzz.py $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
