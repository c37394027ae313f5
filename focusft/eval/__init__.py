"""Evaluation with lm-eval-harness: the ``focusft`` model, task suites and result tables.

Importing :mod:`focusft.eval` registers the ``focusft`` model with lm-eval.
"""

from focusft.eval.model import FocusftLM

__all__ = ["FocusftLM"]
