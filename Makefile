# The two set-up commands of the README. Both create .venv (once) and install the package.
PYTHON ?= python3
VENV := .venv
WORKDIR ?= workdirs/default

$(VENV)/installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: run test test-fast benchmark
run: $(VENV)/installed  ## Train + evaluate the embedded default (CPU, a few minutes).
	$(VENV)/bin/python -m recon3d_jax.main --config=configs/default.py --workdir=$(WORKDIR)

test: $(VENV)/installed  ## The whole test suite (what CI runs).
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -q

test-fast: $(VENV)/installed  ## Between edits: the suite minus the end-to-end tests marked slow.
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -q -m "not slow"

benchmark: $(VENV)/installed  ## Rendering and train-step throughput on this machine.
	$(VENV)/bin/python benchmarks/throughput.py
