"""The code tool's sandbox: what a tool call must not do is contained and told to the model."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from focusft.agent.sandbox import SandboxLimits, run_python

LIMITS = SandboxLimits(wall_seconds=20.0, cpu_seconds=10, memory_mib=512, max_output_chars=2000)


def _scratch_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("focusft-tool-")}


def test_plain_code_runs_and_prints() -> None:
    result = run_python("import math\nprint(math.factorial(10))", LIMITS)
    assert (result.status, result.output) == ("ok", "3628800\n")


def test_files_inside_the_scratch_directory_work_and_vanish() -> None:
    before = _scratch_dirs()
    result = run_python("open('a.txt', 'w').write('hi')\nimport os\nprint(open('a.txt').read(), os.getcwd())", LIMITS)
    assert result.status == "ok" and result.output.startswith("hi ")
    scratch = result.output.split()[1]
    assert not Path(scratch).exists() and _scratch_dirs() == before


def test_writes_outside_the_scratch_directory_are_refused(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    code = "\n".join(
        [
            "import os, shutil",
            "for attempt in (",
            f"    lambda: open({str(keep)!r}, 'w').write('changed'),",
            f"    lambda: open({str(tmp_path / 'new.txt')!r}, 'x'),",
            f"    lambda: os.remove({str(keep)!r}),",
            f"    lambda: os.rename({str(keep)!r}, 'stolen.txt'),",
            f"    lambda: os.open({str(tmp_path / 'raw.txt')!r}, os.O_WRONLY | os.O_CREAT),",
            f"    lambda: shutil.rmtree({str(tmp_path)!r}),",
            "):",
            "    try:",
            "        attempt()",
            "        print('ALLOWED')",
            "    except PermissionError as error:",
            "        print('refused:', error)",
        ]
    )
    result = run_python(code, LIMITS)
    assert result.status == "ok", result.output
    assert "ALLOWED" not in result.output and result.output.count("refused: sandbox:") == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"] and keep.read_text() == "original"


def test_network_is_refused() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED')"
        result = run_python(code, LIMITS)
    finally:
        server.close()
    assert result.status == "error" and "CONNECTED" not in result.output
    assert "not allowed" in result.output


def test_endless_forking_is_refused() -> None:
    result = run_python("import os\nwhile True:\n    os.fork()", LIMITS)
    assert result.status == "error" and "os.fork is not allowed" in result.output


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.execv('/bin/true', ['true'])",
    ],
)
def test_new_processes_are_refused(code: str) -> None:
    result = run_python(code, LIMITS)
    assert result.status == "error" and "is not allowed" in result.output


def test_native_calls_through_ctypes_are_refused() -> None:
    result = run_python("import ctypes\nctypes.CDLL(None).system(b'true')", LIMITS)
    assert result.status == "error" and "ctypes.dlsym is not allowed" in result.output


def test_endless_allocation_hits_the_memory_limit() -> None:
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 * 1024))", LIMITS)
    assert result.status in ("error", "killed") and ("MemoryError" in result.output or "tool stopped" in result.output)


def test_code_that_never_returns_is_stopped_at_the_wall_limit() -> None:
    result = run_python("import time\ntime.sleep(600)", SandboxLimits(wall_seconds=2.0, cpu_seconds=5))
    assert result.status == "timeout" and "no result within 2 s" in result.output


def test_output_is_truncated() -> None:
    result = run_python("print('x' * 50000)", SandboxLimits(max_output_chars=100))
    assert result.output.startswith("x" * 100) and "[output truncated: 49901 more characters]" in result.output


def test_numpy_works_inside() -> None:
    result = run_python("import numpy as np\nprint(int(np.arange(10).sum()))", LIMITS)
    assert (result.status, result.output) == ("ok", "45\n")
