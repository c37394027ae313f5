"""Packing several samples into rows of exactly ``max_seq_len`` tokens, each with its document ids.

Greedy and in order, like torchtune's ``PackedDataset``: a sample joins the current row if
it fits, else the row is padded and closed. Document ids (with positions restarting at
each document, see :func:`focusft.masks.document_positions`) keep every sample's own turn
structure and stop any token from seeing another sample. Padding is context, has label
``IGNORE_INDEX``, ``valid = False`` and a document id of its own. A row's ``sample_index``
lists its documents' indices in the sample list, which seed their fast weights.
"""

from __future__ import annotations

from typing import Any

from focusft.split_decoder import IGNORE_INDEX


def pack_samples(
    samples: list[dict[str, list]], max_seq_len: int, padding_idx: int, ignore_idx: int = IGNORE_INDEX
) -> list[dict[str, list]]:
    """Packed rows with ``tokens``, ``labels``, ``context``, ``doc``, ``valid`` and ``sample_index``."""
    rows: list[dict[str, list]] = []
    current: list[dict[str, list]] = []
    used = 0
    for index, sample in enumerate(samples):
        length = len(sample["tokens"])
        if length > max_seq_len:
            raise ValueError(f"Sample {index} has {length} tokens, more than max_seq_len={max_seq_len}.")
        if used + length > max_seq_len:
            rows.append(_row(current, max_seq_len, padding_idx, ignore_idx))
            current, used = [], 0
        current.append({**sample, "sample_index": [index]})
        used += length
    if current:
        rows.append(_row(current, max_seq_len, padding_idx, ignore_idx))
    return rows


def _row(samples: list[dict[str, Any]], length: int, padding_idx: int, ignore_idx: int) -> dict[str, list]:
    row: dict[str, list] = {key: [] for key in ("tokens", "labels", "context", "doc", "valid", "sample_index")}
    for doc, sample in enumerate(samples):
        row["sample_index"] += sample["sample_index"]
        for key in ("tokens", "labels", "context"):
            row[key] += sample[key]
        row["doc"] += [doc] * len(sample["tokens"])
        row["valid"] += [True] * len(sample["tokens"])
    pad = length - len(row["tokens"])
    row["tokens"] += [padding_idx] * pad
    row["labels"] += [ignore_idx] * pad
    row["context"] += [True] * pad
    row["doc"] += [len(samples)] * pad
    row["valid"] += [False] * pad
    return row
