# detr-mini-coco — the commands the README names.
#   make setup   .venv/ with the package (editable) and its dev tools
#   make test    the whole test suite, notebooks included (nbval, demo profile)
#   make demo    all six notebooks offline on synthetic data, figures into report/
#   make study   download COCO val2017 and the checkpoint, run the real study (GPU)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo study clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

