"""The default demo, end to end, and its accuracies: the figures the README's Quick start quotes.

    python benchmarks/demo_accuracy.py [--variants all] [--steps N] [--output-dir DIR]

Runs ``python -m focusft.demo`` from scratch (``--fresh``) with the given options, then
prints the wall time, the machine and exact match ± stderr per variant and length. A script
that prints figures, not a test: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="sft,focusft")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs/demo/benchmark")
    args = parser.parse_args()
    command = [sys.executable, "-m", "focusft.demo", "--fresh", "--quiet", "--variants", args.variants]
    command += ["--output-dir", str(args.output_dir)] + (["--steps", str(args.steps)] if args.steps else [])
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return done.returncode
    rows = json.loads((args.output_dir / "results.json").read_text())["rows"]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"\nmachine: {machine}; demo wall time {seconds / 60:.1f} min")
    for row in rows:
        print(
            f"{row['variant']:>15} {row['length']:>5} tokens: exact match {100 * row['accuracy']:5.1f} "
            f"± {100 * row['stderr']:.1f}% causal, {100 * row['bidir_accuracy']:5.1f} "
            f"± {100 * row['bidir_stderr']:.1f}% bidir prefill (n={row['samples']}), step {row['step_seconds']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
