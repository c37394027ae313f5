"""Fixtures of the tests that run the recipe: the tiny base checkpoint and the tiny CPU config."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from focusft.tiny import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "configs/tiny/focusft_cpu.yaml"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """The tiny model and tokenizer as an HF checkpoint directory."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """The shipped tiny CPU config, training on the memorisation set of tests/recipe_data.py."""
    cfg = OmegaConf.load(SHIPPED_CONFIG)
    cfg.dataset = {"_component_": "tests.recipe_data.memorisation_dataset", "num_samples": 8}
    path = tmp_path_factory.mktemp("config") / "tiny_memorisation.yaml"
    OmegaConf.save(cfg, path)
    return path
