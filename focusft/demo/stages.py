"""Running the demo's stages as subprocesses: each logs to its own file, shows its progress, and is reused.

A stage is done when its marker file holds the same settings as the run asking for it; a
finished stage with other settings is rebuilt. A stage that fails stops the demo with one
line naming it and its log file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "stage.json"


class StageError(RuntimeError):
    """A stage that failed; the message is the one line the demo prints."""


@dataclass(frozen=True)
class Stage:
    """One step of the demo: a command that writes ``output``."""

    name: str
    command: list[str]
    output: Path
    settings: dict[str, Any]
    cwd: Path | None = None

    def done(self) -> bool:
        marker = self.output / MARKER
        # Compared as JSON: tuples in the settings come back from the marker as lists.
        return marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(self.settings))


def run_stage(stage: Stage, log_dir: Path, echo: bool = True, force: bool = False, program: str = "demo") -> bool:
    """Run ``stage`` unless it is done (``force``: an input of it was just rebuilt); returns whether it ran.

    Output goes to ``log_dir/<name>.log`` and, when ``echo``, to the terminal as it comes
    (progress bars included). ``program`` names the caller in the failure message.
    """
    if not force and stage.done():
        print(f"[{stage.name}] reusing {stage.output}", flush=True)
        return False
    if stage.output.exists():
        shutil.rmtree(stage.output)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{stage.name}.log"
    print(f"[{stage.name}] running (log: {log})", flush=True)
    with log.open("wb") as handle:
        handle.write((" ".join(stage.command) + "\n").encode())
        handle.flush()
        process = subprocess.Popen(
            stage.command,
            cwd=stage.cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # progress reaches the log as it happens
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        while chunk := process.stdout.read1(4096):
            handle.write(chunk)
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        returncode = process.wait()
    if returncode != 0:
        raise StageError(f"{program} stage '{stage.name}' failed (exit code {returncode}); see its log: {log}")
    stage.output.mkdir(parents=True, exist_ok=True)
    (stage.output / MARKER).write_text(json.dumps(stage.settings, indent=1))
    return True
