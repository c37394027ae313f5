"""Evaluation with lm-eval-harness: the ``focusft`` model, task suites and result tables.

Importing :mod:`focusft.eval` registers the ``focusft`` model with lm-eval.
"""

import lm_eval.evaluator

from focusft.console import git_commit_hash
from focusft.eval.model import FocusftLM

# The same commit hash in results, without git's "fatal: not a git repository" line outside a repository.
lm_eval.evaluator.get_git_commit_hash = git_commit_hash

__all__ = ["FocusftLM"]
