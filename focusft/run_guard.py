"""One run per output_dir, and no worker outliving its launcher.

Two runs writing into one ``output_dir`` would interleave their checkpoints and
``.staging`` folders; an exclusive ``fcntl.flock`` on ``output_dir/.lock``, held for
the whole run, refuses the second one. Workers whose torchrun launcher was killed
(``kill -9`` leaves them orphaned) would train on and race a resumed run for the same
files; a watchdog thread ends them once their parent process is gone.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from focusft.errors import ConfigError  # not focusft.config: this module must import fast

LOCK_FILE = ".lock"
LAUNCHER_GONE_EXIT_CODE = 75  # EX_TEMPFAIL: nothing wrong with the run, resume it
REPORTED_ERROR_EXIT_CODE = 3  # a worker printed its one-line `FocuSFT … error:` (focusft.launch adds nothing)


def unwritable_reason(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` (created if missing), or None if they can.

    Creates and removes a probe file: ``os.access`` says yes to root even on a read-only mount
    or a folder with ``chattr +i``.
    """
    if directory.exists() and not directory.is_dir():
        return f"{directory} is a file, not a folder"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        return f"{directory} cannot be written: {error.strerror or error}"
    return None


def lock_output_dir(output_dir: Path) -> IO[str]:
    """Take the run's lock on ``output_dir``; keep the returned file open for as long as the run lasts.

    The lock file says who holds it (host, pid, start time); the lock itself is the
    kernel's and goes away with the process, however it ends.
    """
    path = output_dir / LOCK_FILE
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the whole run
    except OSError as error:
        raise ConfigError(f"output_dir {output_dir} is not writable: {error.strerror or error}.") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not written its name yet"
        handle.close()
        raise ConfigError(
            f"output_dir {output_dir} is in use by another run ({holder}). Wait for it to end, or choose another "
            "output_dir."
        ) from None
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, started {started}\n")
        handle.flush()
    except OSError as error:  # ENOSPC on a full disk: nothing else would fit either
        handle.close()
        raise ConfigError(
            f"output_dir {output_dir} cannot be written ({error.strerror or error} writing {path}). Free space "
            "there or choose another output_dir."
        ) from None
    return handle


def exit_when_launcher_dies(poll_seconds: float = 1.0) -> None:
    """End this worker (exit code 75) when its parent, the torchrun launcher, is gone.

    An orphan is re-parented (to init or a subreaper), so a changed parent pid means
    the launcher died without stopping its workers. Call it as early as possible: a
    launcher that dies before this call goes unnoticed.
    """
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_seconds)
        print(
            f"FocuSFT: the launcher (pid {launcher}) is gone; stopping worker {os.getpid()}. "
            "Resume with resume_from_checkpoint=True.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(LAUNCHER_GONE_EXIT_CODE)

    threading.Thread(target=watch, name="focusft-launcher-watchdog", daemon=True).start()
