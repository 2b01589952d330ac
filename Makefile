# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all clean-results

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) run_all.py --suite smoke

$(VENV)/.installed-ray: $(VENV)/.installed requirements-ray.txt
	$(PY) -m pip install -q -r requirements-ray.txt
	touch $@

test: $(VENV)/.installed $(VENV)/.installed-ray
	$(PY) -m pytest

test-all: $(VENV)/.installed $(VENV)/.installed-ray
	$(PY) -m pytest -m ""

clean-results:
	rm -rf results/smoke results/checkpoints
