"""Fixtures of the tests that run the recipe: the tiny base checkpoint, the tiny CPU config, shared runs.

Session-scoped, so that a run one module makes (tests/test_recipe.py's RUNS) serves another's
reference too (tests/test_preemption.py).
"""

from __future__ import annotations

import os

# One OpenMP thread per process unless the caller chose: many tests launch two training
# processes, which on a 2-core machine would otherwise run four threads on two cores. The whole
# suite took 17 min at one thread against 21 min at the default (2 quiet cores, 2026-12-01).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest
from omegaconf import OmegaConf

from focusft.tiny import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "configs/tiny/focusft_cpu.yaml"


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    """The tiny model and tokenizer as an HF checkpoint directory."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def config(tmp_path_factory) -> Path:
    """The shipped tiny CPU config, training on the memorisation set of tests/recipe_data.py."""
    cfg = OmegaConf.load(SHIPPED_CONFIG)
    cfg.dataset = {"_component_": "tests.recipe_data.memorisation_dataset", "num_samples": 8}
    path = tmp_path_factory.mktemp("config") / "tiny_memorisation.yaml"
    OmegaConf.save(cfg, path)
    return path


@pytest.fixture(scope="session")
def runs(config, base_dir, tmp_path_factory):
    """``runs(name)``: the output directory and metrics of tests/test_recipe.py's run ``name``, run once."""
    from tests.test_recipe import cached_runs

    return cached_runs(config, base_dir, tmp_path_factory)
