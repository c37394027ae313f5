"""One run per output_dir, and workers that end when their launcher is killed."""

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from focusft.config import ConfigError
from focusft.run_guard import LAUNCHER_GONE_EXIT_CODE, lock_output_dir

REPO = Path(__file__).resolve().parents[1]


def test_a_second_holder_is_refused_with_the_first_ones_host_and_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from focusft.run_guard import "
         "lock_output_dir; h = lock_output_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)",
         str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as error:
            lock_output_dir(tmp_path)
        assert f"output_dir {tmp_path} is in use by another run (host {socket.gethostname()}, pid {holder.pid}," in str(
            error.value
        )
    finally:
        holder.kill()
        holder.wait()
    lock_output_dir(tmp_path).close()  # the kernel dropped the lock with its holder


class FullDiskFile:
    """A file on a full disk: opening works, writing its first block fails with ENOSPC."""

    def __init__(self, path, mode):
        self.file = open(path, mode)  # noqa: SIM115

    def __getattr__(self, name):
        return getattr(self.file, name)

    def flush(self):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_start_is_one_config_error_naming_the_lock_file(tmp_path, monkeypatch):
    monkeypatch.setattr("focusft.run_guard.open", FullDiskFile, raising=False)
    with pytest.raises(ConfigError) as error:
        lock_output_dir(tmp_path)
    assert str(error.value) == (
        f"output_dir {tmp_path} cannot be written (No space left on device writing {tmp_path / '.lock'}). "
        "Free space there or choose another output_dir."
    )


def alive(pid: int) -> bool:
    """Running (a zombie that no init reaps counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_ends_when_its_launcher_is_killed(tmp_path):
    # launcher -> worker; the worker watches its parent and would otherwise sleep for a minute.
    watching = tmp_path / "watching"
    worker = (
        "import time; from pathlib import Path; from focusft.run_guard import exit_when_launcher_dies; "
        f"exit_when_launcher_dies(poll_seconds=0.1); Path({str(watching)!r}).touch(); time.sleep(60)"
    )
    launcher = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {worker!r}]); print(p.pid, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=REPO, stdout=subprocess.PIPE, text=True)
    worker_pid = int(proc.stdout.readline())
    deadline = time.monotonic() + 30
    while not watching.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(worker_pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker_pid)
    assert LAUNCHER_GONE_EXIT_CODE == 75
