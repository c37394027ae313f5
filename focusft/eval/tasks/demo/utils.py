"""Hooks named by the demo task YAML (``!function utils.…``); the logic lives in focusft.demo.evaluate."""

from focusft.demo.evaluate import build_dataset, process_results

__all__ = ["build_dataset", "process_results"]
