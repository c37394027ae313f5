"""``python -m focusft.launch``: ``tune run`` for the FocuSFT recipe, with errors and stops left at one line.

    python -m focusft.launch --nproc_per_node 8 recipes/focusft_distributed.py --config CONFIG [key=value ...]

Arguments are those of ``tune run`` (torchrun's options, the recipe, its config and
overrides; ``torchrun --help`` lists the options). torchrun answers any worker that exits
non-zero with a traceback of its own (``ChildFailedError``), even after the worker said
in one line what is wrong. This runs the same torchrun launch; when a worker exits with
the recipe's "error reported" code it exits with that code and adds nothing, and any
other failure gets one line of its own.

SIGTERM (how SLURM and Kubernetes preempt a job) is forwarded to the workers, which
finish their optimizer step, save a checkpoint, name it in one line and exit; this
waits for them however long the save takes and exits with 143. SIGINT (Ctrl-C) stops
the workers at once and exits with 130. See :mod:`focusft.preemption`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from focusft.run_guard import REPORTED_ERROR_EXIT_CODE

HELP_FLAGS = ("-h", "--help")
# torchrun's warnings while it passes a stop signal on; the workers' own line says what happened.
_SIGNAL_NOISE = {
    "torch.distributed.elastic.agent.server.api": "death signal, shutting down workers",
    "torch.distributed.elastic.multiprocessing.api": "closing signal",
}


def _drop_signal_noise() -> None:
    for name, fragment in _SIGNAL_NOISE.items():
        logging.getLogger(name).addFilter(lambda record, fragment=fragment: fragment not in record.getMessage())


def worker_pids() -> list[int]:
    """This process's children that lead their own process group: torchrun's workers."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    leaders = []
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                leaders.append(pid)
        except ProcessLookupError:
            continue
    return leaders


class SigtermForwarder:
    """Handles SIGTERM in the launcher by passing it to every worker; torchrun keeps watching them."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        for pid in worker_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue


def wants_help(argv: list[str]) -> bool:
    """``--help`` before the recipe is for the launcher (after it, the recipe's config parser answers)."""
    for arg in argv:
        if arg in HELP_FLAGS:
            return True
        if arg.endswith(".py"):
            return False
    return not argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(__doc__)
        return 0
    args = get_args_parser().parse_args(argv)
    if not args.rdzv_endpoint:  # as tune run: several local jobs can run side by side
        args.standalone = True
    script = Path(args.training_script)
    if script.suffix == ".py" and not script.is_absolute():  # as tune run: a recipe path runs as a module
        args.training_script = ".".join(script.with_suffix("").parts)
        args.module = True
    forwarder = None
    _drop_signal_noise()
    if hasattr(args, "signals_to_handle"):  # torch >= 2.8: SIGTERM is ours, torchrun keeps the others
        handled = [s.strip() for s in args.signals_to_handle.split(",")]
        args.signals_to_handle = ",".join(s for s in handled if s != "SIGTERM")
        forwarder = SigtermForwarder()
        signal.signal(signal.SIGTERM, forwarder)
    try:
        run(args)
    except ChildFailedError as failed:
        codes = {f.exitcode for f in failed.failures.values()}
        if REPORTED_ERROR_EXIT_CODE in codes:
            return REPORTED_ERROR_EXIT_CODE
        if forwarder is not None and forwarder.received:
            return 128 + signal.SIGTERM  # the workers saved and said so (or were stopped before training)
        rank, failure = failed.get_first_failure()
        print(
            f"FocuSFT launch error: rank {rank} exited with code {failure.exitcode}; its output is above.",
            file=sys.stderr,
        )
        return 1
    except Exception as error:  # torchrun's SignalException: it has already stopped the workers
        sigval = getattr(error, "sigval", None)
        if sigval is None:
            raise
        return 128 + int(sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
