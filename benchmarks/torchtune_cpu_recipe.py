"""torchtune's ``full_finetune_distributed`` recipe, unchanged, with the shims it needs on CPU.

torchtune 0.6.1 calls CUDA-only memory helpers unconditionally (``get_memory_stats``
raises on CPU; ``cleanup_before_training`` calls ``torch.cpu.empty_cache``, which does
not exist). They only log or free caches, so on CPU they become no-ops here. Used
by benchmarks/torchtune_sft_compare.py; never by the project's recipe.

    torchrun --nproc_per_node 2 benchmarks/torchtune_cpu_recipe.py --config CONFIG [key=value ...]
"""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path

import torchtune
from torchtune import training


def load_torchtune_recipe():
    path = Path(torchtune.__file__).resolve().parents[1] / "recipes" / "full_finetune_distributed.py"
    spec = importlib.util.spec_from_file_location("torchtune_full_finetune_distributed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_cpu_shims() -> None:
    training.get_memory_stats = lambda device, reset_stats=True: {}
    training.log_memory_stats = lambda stats, message="": None
    training.cleanup_before_training = gc.collect


if __name__ == "__main__":
    install_cpu_shims()
    sys.exit(load_torchtune_recipe().recipe_main())
