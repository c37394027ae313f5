"""Keep known third-party noise that is not the user's business off the console.

Each filter drops one message and nothing else, so real warnings from the same
libraries still show:

- torchao 0.15's import-time "Skipping import of cpp extensions ..." (it has no kernels
  built for this torch; nothing here uses them);
- torchdata 0.11's ``'set_vital' is deprecated`` (its dataloader calls a deprecated torch API);
- fuzzywuzzy's "Using slow pure-python SequenceMatcher" (imported by lm-eval's tasks);
- lm-eval's per-task hint that custom kwargs go to ``--metadata`` (the README says so once);
- ``fatal: not a git repository`` from lm-eval asking git for the current directory's
  commit (it records none either way outside a repository).

:func:`quiet_third_party_noise` runs when :mod:`focusft` is imported, so it must stay
free of heavy imports: torchao logs its line while it is being imported.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings

_DROPPED_LOG_MESSAGES = {
    "torchao": "Skipping import of cpp extensions",
    "lm_eval.api.task": "Custom kwargs can be passed to `--metadata`",
}
_DROPPED_WARNINGS = (
    r"'set_vital' is deprecated",
    r"Using slow pure-python SequenceMatcher",
)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def quiet_third_party_noise() -> None:
    """Install the filters (idempotent)."""
    for name, fragment in _DROPPED_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessage(fragment))
    for message in _DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def git_commit_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` (same result) without git's error line outside a repository."""
    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        from lm_eval.loggers.utils import get_commit_from_path

        return get_commit_from_path(os.getcwd())
    return out.stdout.strip()
