"""A torchtune metric logger that also records when each step was logged, for step times."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from torchtune.training.metric_logging import DiskLogger


class TimedDiskLogger(DiskLogger):
    """``DiskLogger`` plus ``step_times.json``: seconds between consecutive ``log_dict`` calls.

    Both recipes log once per optimizer step (``log_every_n_steps: 1``) right after it,
    so the intervals are step times measured the same way for both.
    """

    def __init__(self, log_dir: str, filename: str | None = None, **kwargs):
        super().__init__(log_dir, filename, **kwargs)
        self._times_path = Path(log_dir) / "step_times.json"
        self._stamps: list[float] = []

    def log_dict(self, payload: Mapping, step: int) -> None:
        self._stamps.append(time.perf_counter())
        super().log_dict(payload, step)
        intervals = [b - a for a, b in zip(self._stamps, self._stamps[1:])]
        self._times_path.write_text(json.dumps(intervals))
