"""Evaluation with lm-eval-harness: the ``focusft`` model, task suites and result tables.

Importing :mod:`focusft.eval` registers the ``focusft`` model with lm-eval. ``TASKS_DIR`` holds
this project's lm-eval tasks (pass it as ``TaskManager(include_path=...)``).
"""

import lm_eval.evaluator

from focusft.console import git_commit_hash
from focusft.eval.model import FocusftLM
from focusft.eval.suites import TASKS_DIR

# The same commit hash in results, without git's "fatal: not a git repository" line outside a repository.
lm_eval.evaluator.get_git_commit_hash = git_commit_hash

__all__ = ["TASKS_DIR", "FocusftLM"]
