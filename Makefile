# Fresh-machine entry points. Everything lives in a local virtualenv (.venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded default: synthetic data, training and evaluation, written to demo_out/.
demo: $(STAMP)
	$(PY) demo.py --out demo_out

## The whole test suite (CPU, a few minutes).
test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/data.py
	$(PY) bench/metrics.py
	$(PY) bench/speed.py --markdown

clean:
	rm -rf demo_out .pytest_cache
