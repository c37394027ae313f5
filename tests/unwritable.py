"""An output folder that cannot be written: a file in its place, or (faked) a read-only file system."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

KINDS = ["a file", "read-only"]


def _read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")


def unwritable_dir(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """(the folder, what focusft.run_guard.unwritable_reason says of it).

    A read-only mount or ``chattr +i`` cannot be made here (root, no capabilities), so the
    probe file's creation fails as it would there.
    """
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("")
        return out, f"{out} is a file, not a folder"
    monkeypatch.setattr("focusft.run_guard.tempfile.TemporaryFile", _read_only)
    return out, f"{out} cannot be written: Read-only file system"
