"""The code-execution tool of agentic rollouts: Python run in a contained child process.

A model's tool call is untrusted code. Each call runs in a fresh process of its own, in a
fresh scratch directory that is deleted afterwards, under these layers:

- resource limits (``setrlimit``): CPU seconds, address space (memory), file size, open files,
  and processes (the last is ignored for root, hence the next layer);
- a Python audit hook (PEP 578), installed before the tool's code runs and impossible to
  remove from Python: it refuses sockets, new processes (fork, exec, spawn, subprocess,
  ``os.system``), looking up or calling native functions through ``ctypes`` (loading a library
  stays allowed: numpy does it at import), and every write, rename, removal
  or permission change outside the scratch directory;
- a new network namespace (``unshare(CLONE_NEWNET)``, only loopback, which is down) where
  the kernel allows it (root, or unprivileged user namespaces); the audit hook blocks
  sockets either way;
- a wall-clock limit: the whole process group is killed when it runs out;
- output (stdout and stderr together) is truncated to a fixed number of characters.

Whatever happens, the model gets text back: the output, or a one-line note of what stopped
the code (timeout, memory, a refused operation), as the tool's response.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

# Runs in the child before the tool's code: limits what Python itself may do (see module doc).
_BOOTSTRAP = r"""
import os, sys
_scratch = os.path.realpath(sys.argv[1])
os.chdir(_scratch)
_code = sys.stdin.read()
sys.stdin = open(os.devnull)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_REFUSED = (
    "socket.", "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn",
    "os.exec", "os.spawn", "os.kill", "os.killpg", "pty.", "os.startfile",
    "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata",
)
_PATH_EVENTS = {
    "os.remove": 1, "os.rmdir": 1, "os.rename": 2, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
    "os.symlink": 2, "os.link": 2, "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1,
    "os.chdir": 1, "os.chroot": 1, "os.setxattr": 1, "os.removexattr": 1,
}
_realpath = os.path.realpath
_sep = os.sep

def _inside(path):
    if isinstance(path, int):
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    full = _realpath(path)
    return full == _scratch or full.startswith(_scratch + _sep)

def _guard(event, args):
    if event.startswith(_REFUSED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and flags & _WRITE_FLAGS
        )
        if writes and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the scratch directory is not allowed")
    elif event in _PATH_EVENTS:
        for path in args[: _PATH_EVENTS[event]]:
            if path is not None and not _inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} outside the scratch directory is not allowed")

sys.addaudithook(_guard)
del _guard
exec(compile(_code, "<tool>", "exec"), {"__name__": "__main__"})
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one tool call. Units: seconds, MiB, characters."""

    wall_seconds: float = 30.0
    cpu_seconds: int = 30
    memory_mib: int = 2048
    file_size_mib: int = 64
    max_processes: int = 64
    max_output_chars: int = 8000


@dataclass(frozen=True)
class ToolResult:
    """What one tool call returned: ``output`` is what the model sees; ``status`` is one of
    ``ok``, ``error`` (non-zero exit), ``timeout``, ``killed`` (a limit's signal)."""

    output: str
    status: str
    exit_code: int | None


def _limit_child(limits: SandboxLimits) -> None:
    """``preexec_fn``: new session (so the group can be killed), limits, no network if possible."""
    os.setsid()
    mib = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mib * mib, limits.memory_mib * mib))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mib * mib, limits.file_size_mib * mib))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        libc.unshare(CLONE_NEWUSER | CLONE_NEWNET)  # unprivileged: best effort, the audit hook still holds


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[output truncated: {len(text) - limit} more characters]"


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> ToolResult:
    """Run ``code`` with ``python -I`` in a new scratch directory; never raises for the code's faults.

    The directory is created under the system's temp dir and removed afterwards, with all
    that the code wrote in it. The child's environment holds only PATH, HOME=TMPDIR=scratch and
    single-threaded math libraries (so numerical imports fit the memory limit).
    """
    scratch = Path(tempfile.mkdtemp(prefix="focusft-tool-"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, str(scratch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=scratch,
            env=env,
            preexec_fn=lambda: _limit_child(limits),
        )
        try:
            raw, _ = proc.communicate(code.encode("utf-8", "replace"), timeout=limits.wall_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raw, _ = proc.communicate()
            timed_out = True
        output = _truncate(raw.decode("utf-8", "replace"), limits.max_output_chars)
        return _result(output, proc.returncode, timed_out, limits)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _result(output: str, code: int, timed_out: bool, limits: SandboxLimits) -> ToolResult:
    if timed_out:
        note = f"[tool stopped: no result within {limits.wall_seconds:g} s of wall time]"
        return ToolResult(f"{output}\n{note}".lstrip("\n"), "timeout", None)
    if code < 0:
        name = signal.Signals(-code).name
        why = {"SIGXCPU": f"CPU time limit of {limits.cpu_seconds} s", "SIGKILL": "killed (memory or a limit)"}
        note = f"[tool stopped: {why.get(name, name)}]"
        return ToolResult(f"{output}\n{note}".lstrip("\n"), "killed", code)
    if code != 0:
        return ToolResult(output, "error", code)
    return ToolResult(output, "ok", 0)
