# `make test` sets up .venv on first use (torch pinned to the CPU wheel) and runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo venv clean-venv bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

# The whole pipeline on generated music (about 15 min on 2 CPU cores); results in runs/demo/.
demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m musicssl.cli demo --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/backbone_speed.py

clean-venv:
	rm -rf $(VENV)
