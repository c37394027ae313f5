"""A metric logger whose write errors (a disk filling up mid-run) stop the run with one line, on every rank.

Only rank 0 logs, so its OSError cannot simply be raised: the other ranks would wait in the
next collective. :class:`GuardedMetricLogger` keeps the first failure instead; the recipe
hands it to :meth:`focusft.preemption.StopSignals.agreed` at the step boundary, which
raises it on every rank together.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from focusft.checkpointing import latest_checkpoint


class MetricsError(RuntimeError):
    """Metrics could not be written; the message names where and what to do."""


class GuardedMetricLogger:
    """Wraps a torchtune metric logger (``log_dict``, ``log_config``, ``close``); see the module docstring."""

    def __init__(self, logger: Any, destination: str, output_dir: Path) -> None:
        self.logger = logger
        self.destination = destination
        self.output_dir = output_dir
        self.failure: MetricsError | None = None

    def log_dict(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.failure is not None:
            return
        try:
            self.logger.log_dict(metrics, step=step)
        except OSError as error:
            latest = latest_checkpoint(self.output_dir)
            self.failure = MetricsError(
                f"cannot write the metrics of step {step} to {self.destination}: {error.strerror or error}. "
                f"Training stopped; the last checkpoint is {latest or 'none yet'}. Free space there, then resume "
                "with resume_from_checkpoint=True."
            )

    def log_config(self, cfg: Any) -> None:
        self.logger.log_config(cfg)

    def close(self) -> None:
        try:
            self.logger.close()
        except OSError as error:
            raise MetricsError(
                f"cannot write the last metrics to {self.destination}: {error.strerror or error}."
            ) from None
