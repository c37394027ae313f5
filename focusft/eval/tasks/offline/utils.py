"""Hooks named by the offline task YAMLs (``!function utils.…``); the logic lives in focusft.eval.offline."""

from focusft.eval.offline import build_dataset, process_results

__all__ = ["build_dataset", "process_results"]
