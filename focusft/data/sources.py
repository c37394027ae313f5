"""Rows of a chat dataset, each with a name for error messages: "train.jsonl line 12".

Local JSON is read with the ``json`` module rather than through Arrow, so that a malformed
or oddly typed row is reported (or skipped) as that row instead of failing the whole load
with a schema error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Row = tuple[str, Any]  # (where, row); the row is a BadRowError when it could not even be read


class DataError(ValueError):
    """Data or data settings that cannot be used; the message is written for the user."""


class BadRowError(DataError):
    """A row that cannot be used; the message names the file and row and says why."""


def load_rows(source: str, data_files: str | list[str] | None = None, split: str = "train", **hub_kwargs) -> list[Row]:
    """Rows of local ``json`` (JSON Lines or a JSON array) or ``parquet`` files, or of a hub dataset by name."""
    if source in ("json", "parquet"):
        if not data_files:
            raise DataError(f"dataset.source={source} needs dataset.data_files: a path or a list of paths.")
        paths = [Path(p) for p in ([data_files] if isinstance(data_files, str) else data_files)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"Data files not found: {missing}")
        read = _json_rows if source == "json" else _parquet_rows
        return [row for path in paths for row in read(path)]
    return _hub_rows(source, data_files, split, **hub_kwargs)


def _json_rows(path: Path) -> Iterator[Row]:
    """JSON Lines are decoded line by line, so a line that is not UTF-8 is one bad row."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    if data.lstrip().startswith(b"["):
        try:
            rows = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise BadRowError(f"{path}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})") from None
        except json.JSONDecodeError as err:
            raise BadRowError(f"{path} line {err.lineno}: not valid JSON ({err.msg})") from None
        for index, row in enumerate(rows):
            yield f"{path} row {index}", row
        return
    # Only \n (and \r\n) end a line: JSON text may hold U+2028 and other characters str.splitlines splits on.
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield f"{path} line {number}", _parse_line(line)


def _parse_line(line: bytes) -> Any:
    """A broken line is one bad row (a :class:`BadRowError` in place of the row), not a broken file."""
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as err:
        return BadRowError(f"not UTF-8 text (byte {line[err.start]:#04x} at byte {err.start + 1} of the line)")
    except json.JSONDecodeError as err:
        return BadRowError(f"not valid JSON ({err.msg} at column {err.colno})")


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path} is not a readable Parquet file ({reason}).") from None
    for index, row in enumerate(table.to_pylist()):
        yield f"{path} row {index}", row


def _hub_rows(name: str, data_files: str | list[str] | None, split: str, **hub_kwargs) -> list[Row]:
    """A dataset by name: asks the Hub first whether it answers (datasets would retry for ~25 s, then fail)."""
    import datasets
    from huggingface_hub import constants

    from focusft.eval.preflight import hub_unreachable_reason

    offline_hint = (
        "Offline, use source=json or source=parquet with local data_files (or set HF_HUB_OFFLINE=1 to use a copy "
        "in the local datasets cache)."
    )
    if not Path(name).exists() and not constants.HF_HUB_OFFLINE:
        reason = hub_unreachable_reason()
        if reason is not None:
            raise DataError(f"dataset {name!r} comes from the Hugging Face Hub, but {reason}. {offline_hint}")
    try:
        dataset = datasets.load_dataset(name, data_files=data_files, split=split, **hub_kwargs)
    except Exception as err:  # noqa: BLE001 - ConnectionError, missing dataset or split, offline mode, bad kwargs
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"Could not load dataset {name!r} (split {split!r}): {reason}. {offline_hint}") from None
    return [(f"{name} [{split}] row {index}", row) for index, row in enumerate(dataset)]
