"""``python -m focusft.launch``: ``tune run`` for the FocuSFT recipe, with errors left at one line.

    python -m focusft.launch --nproc_per_node 8 recipes/focusft_distributed.py --config CONFIG [key=value ...]

Arguments are those of ``tune run`` (torchrun's options, the recipe, its config and
overrides). torchrun answers any worker that exits non-zero with a traceback of its own
(``ChildFailedError``), even after the worker said in one line what is wrong. This runs
the same torchrun launch; when a worker exits with the recipe's "error reported" code it
exits with that code and adds nothing, and any other failure gets one line of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from focusft.run_guard import REPORTED_ERROR_EXIT_CODE


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.rdzv_endpoint:  # as tune run: several local jobs can run side by side
        args.standalone = True
    script = Path(args.training_script)
    if script.suffix == ".py" and not script.is_absolute():  # as tune run: a recipe path runs as a module
        args.training_script = ".".join(script.with_suffix("").parts)
        args.module = True
    try:
        run(args)
    except ChildFailedError as failed:
        if any(f.exitcode == REPORTED_ERROR_EXIT_CODE for f in failed.failures.values()):
            return REPORTED_ERROR_EXIT_CODE
        rank, failure = failed.get_first_failure()
        print(
            f"FocuSFT launch error: rank {rank} exited with code {failure.exitcode}; its output is above.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
