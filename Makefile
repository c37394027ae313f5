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

# The main job on the built-in tiny default: a 4-layer Qwen2.5-architecture model and synthetic
# long-context data made here, FocuSFT with FSDP2 on 2 CPU processes, then the offline eval suite.
demo: $(STAMP)
	$(PY) -m focusft.tiny outputs/tiny/base
	rm -rf outputs/tiny/focusft outputs/tiny/eval
	$(VENV)/bin/tune run --nproc_per_node 2 recipes/focusft_distributed.py --config configs/tiny/focusft_cpu.yaml
	$(VENV)/bin/focusft-eval --suite offline --checkpoint_dir outputs/tiny/focusft/epoch_1 --lengths 512 \
		--num_samples 8 --device cpu --model_args dtype=float32 --label tiny-focusft --output_dir outputs/tiny/eval

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check focusft recipes tests benchmarks
	$(VENV)/bin/ruff format --check focusft recipes tests benchmarks
