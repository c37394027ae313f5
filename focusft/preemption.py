"""Stopping on SIGTERM (preemption) and SIGINT (Ctrl-C): one line, and on SIGTERM a checkpoint to resume from.

SLURM and Kubernetes preempt a job by sending SIGTERM to its launcher. torchrun passes its
death signal on to every worker's process group; ``python -m focusft.launch`` forwards
SIGTERM to its workers and waits for them without a time limit (torchrun kills them after
``--shutdown_timeout``, 30 s by default). A worker that gets SIGTERM while training only
notes it: at the next optimizer-step boundary every rank all-reduces its note (a max), so
all ranks stop after the same step and the collectives of the save stay matched. The run
saves that step's checkpoint, rank 0 prints one line naming it, and every rank exits with
143 (128 + SIGTERM); a resume continues exactly as if nothing had happened.

Before training starts there is nothing to save, so SIGTERM stops at once. SIGINT stops
at once wherever it arrives, with one line and exit code 130; nothing is saved.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum``: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(signum)


class Stopped(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """Ends the run on a signal (a BaseException, so that no ``except Exception`` swallows it)."""

    def __init__(self, signum: int, message: str, saved: bool = False) -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message
        self.saved = saved  # whether the run saved a checkpoint on the way out

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class StopSignals:
    """The process's SIGTERM / SIGINT handlers and what they have seen.

    ``received``: the first stop signal this process got (None if none). While
    :meth:`deferring_sigterm` is active, SIGTERM is only noted; :meth:`agreed` turns the
    notes of all ranks into one decision.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.pending_sigterm = False
        self.stop_agreed = False
        self._defer = False

    def install(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum
        if signum == signal.SIGTERM and self._defer:
            self.pending_sigterm = True
            return
        name = signal.Signals(signum).name
        raise Stopped(signum, f"stopped by {name}; nothing was saved since the last checkpoint.")

    @contextmanager
    def deferring_sigterm(self) -> Iterator[None]:
        """SIGTERM only sets a flag inside this block (training); a SIGTERM already noted stays noted."""
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def agreed(self, device: torch.device, failure: Exception | None = None) -> bool:
        """Collective, at a step boundary: True on every rank when any rank has a pending SIGTERM.

        ``failure``: an error rank 0 kept back (e.g. metrics it could not write); it is raised
        on every rank, so that all of them stop at this boundary.
        """
        flags = torch.tensor([float(self.pending_sigterm), float(failure is not None)], device=device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        sigterm, failed = flags.tolist()
        if failed:
            kept = [failure]
            if torch.distributed.is_initialized():
                torch.distributed.broadcast_object_list(kept, src=0)
            raise kept[0]
        self.stop_agreed = bool(sigterm)
        return self.stop_agreed


_SIGNALS = StopSignals()


def install_stop_signals() -> StopSignals:
    """Install this process's handlers (idempotent) and return the one :class:`StopSignals`."""
    return _SIGNALS.install()


def report_stop(stopped: Stopped, is_rank_zero: bool, output_dir: str | Path | None = None) -> None:
    """Rank 0 prints ``FocuSFT: <message>``; every rank exits with 128 + the signal number.

    A stop that saved nothing names the checkpoint a resume would start from (``output_dir``'s LATEST).
    """
    if is_rank_zero:
        message = stopped.message
        if not stopped.saved and output_dir is not None:
            from focusft.checkpointing import latest_checkpoint

            latest = latest_checkpoint(Path(str(output_dir)))
            message += (
                f" The last checkpoint is {latest}; resume with resume_from_checkpoint=True."
                if latest is not None
                else " No checkpoint had been written."
            )
        print(f"FocuSFT: {' '.join(message.split())}", file=sys.stderr, flush=True)
    if torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except Exception:  # noqa: BLE001, S110 - a peer already gone: nothing left to tear down cleanly
            pass
    sys.exit(stopped.exit_code)
