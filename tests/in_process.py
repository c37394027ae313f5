"""The recipe run inside the test process, as the one process of ``tune run --nproc_per_node 1`` runs it.

A ``tune run`` starts two Python processes (the launcher and the worker) that each import torch
and torchtune, 10-20 s of CPU on a 2-core machine, while a tiny run itself takes seconds. Checks
that are about neither the launcher nor several processes (what a run trains, logs, saves and
resumes; errors raised before compute) run the recipe here: the recipe file's ``recipe_main`` with
the command line's arguments, world size 1 and its own gloo group, as torchrun would set it up.
The launcher, the processes' consoles and multi-process runs stay tested through ``tune run``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch.distributed

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/focusft_distributed.py"
_recipe: ModuleType | None = None


def recipe_module() -> ModuleType:
    """The recipe file as a module (``recipes`` itself is torchtune's package name, so it is loaded by path)."""
    global _recipe
    if _recipe is None:
        spec = importlib.util.spec_from_file_location("focusft_distributed_recipe", RECIPE)
        _recipe = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_recipe)
    return _recipe


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_recipe(config: Path, overrides: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the recipe on one process here; the exit code and console as a ``tune run`` would give them.

    ``stderr`` holds what the run wrote to stderr and its log records (a process's logging handlers
    write there); an exception the recipe lets through is a traceback and exit code 1, as in a process.
    The signal handlers, environment and process group of the test process are restored afterwards.
    """
    recipe = recipe_module()
    argv = [str(RECIPE), "--config", str(config), *overrides]
    torchrun = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    torchrun |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    out, err = io.StringIO(), io.StringIO()
    records = logging.StreamHandler(err)
    records.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    root = logging.getLogger()
    root.addHandler(records)
    saved_argv, code = sys.argv, 0
    try:
        sys.argv = argv
        consoles = contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)
        with _environment({**torchrun, **(env or {})}), consoles[0], consoles[1]:
            try:
                recipe.recipe_main()
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        root.removeHandler(records)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        gc.collect()  # the run's output_dir lock is an open file of the recipe object: close it
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
