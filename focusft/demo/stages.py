"""Running the demo's stages as subprocesses: each logs to its own file, shows its progress, and is reused.

A stage is done when its marker file holds the same settings as the run asking for it; a
finished stage with other settings is rebuilt. A stage that fails stops the demo with one
line naming it and its log file.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "stage.json"
TIMING = "stage_time.json"  # beside the marker, not in it: a reused stage keeps the time of the run that made it


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
    started, load, cpu = time.time(), os.getloadavg()[0], _children_cpu_seconds()
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
    timing = {
        "seconds": round(time.time() - started, 1),
        "cpu_seconds": round(_children_cpu_seconds() - cpu, 1),  # all its processes: the cost on a quiet machine
        "load_average": round((load + os.getloadavg()[0]) / 2, 2),  # 1-minute load, mean of start and end
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (stage.output / TIMING).write_text(json.dumps(timing))
    (stage.output / MARKER).write_text(json.dumps(stage.settings, indent=1))
    return True


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage_timing(output: Path) -> dict[str, Any] | None:
    """The wall time, load and finishing time the stage that wrote ``output`` recorded (None: not recorded)."""
    path = output / TIMING
    return json.loads(path.read_text()) if path.is_file() else None
