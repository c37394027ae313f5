"""The demo's base model, shipped in ``focusft/demo/base`` (``python -m focusft.demo.shipped_base OUT``).

It was made once by ``python -m focusft.demo.pretrain focusft/demo/base ...`` (the command and
the sink mass over training are in ``focusft/demo/base/pretrain_log.jsonl``), so the demo can
start from a pre-trained model without paying for the pre-training. It was meant to have an
attention sink; it has none (README, "The demo"). This copies its files (weights, config,
tokenizer) to ``OUT``.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

SHIPPED_BASE = Path(__file__).resolve().parent / "base"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def missing_files(base: Path = SHIPPED_BASE) -> list[str]:
    return [name for name in FILES if not (base / name).is_file()]


def fingerprint(base: Path = SHIPPED_BASE) -> str:
    """sha256 of the weights: a new shipped base makes the demo rebuild every stage after it."""
    path = base / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def install(out_dir: Path, base: Path = SHIPPED_BASE) -> Path:
    missing = missing_files(base)
    if missing:
        raise FileNotFoundError(f"FocuSFT demo error: the shipped base {base} lacks {', '.join(missing)}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(base / name, out_dir / name)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m focusft.demo.shipped_base OUT_DIR", file=sys.stderr)
        return 2
    try:
        out = install(Path(args[0]))
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"Copied the shipped demo base {SHIPPED_BASE} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
