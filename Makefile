# `make demo` and `make test` each set up .venv first (pinned, CPU torch) when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The main job on the built-in tiny default: Standard SFT and FocuSFT trained from the same tiny
# model on a retrieval task (2 CPU processes each), evaluated with lm-eval, attention measured;
# table, plots and logs in outputs/demo/default. DEMO_ARGS passes options, e.g. DEMO_ARGS="--variants all".
demo: $(STAMP)
	$(PY) -m focusft.demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check focusft recipes tests benchmarks
	$(VENV)/bin/ruff format --check focusft recipes tests benchmarks
