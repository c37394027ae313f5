"""Collate samples into the batch contract of :mod:`focusft.batch`."""

from __future__ import annotations

from typing import Any

import torch

from focusft.split_decoder import IGNORE_INDEX

OPTIONAL_KEYS = ("doc", "valid")


def collate_focus_batch(
    samples: list[dict[str, Any]], padding_idx: int = 0, ignore_idx: int = IGNORE_INDEX
) -> dict[str, torch.Tensor]:
    """Right-pad samples to the longest one and stack them.

    A sample has ``tokens``, ``labels`` (unshifted) and ``context`` of one length, and
    ``doc`` and ``valid`` if it is a packed row (else it is one document, all valid).
    Padding is context, has ``valid = False`` and a document id one past the row's last,
    so it joins nothing. ``sample_index`` (the dataset index of each of the sample's
    documents, in document-id order) is stacked into ``[b, max_docs]``, padded with -1.
    """
    if not samples:
        raise ValueError("collate_focus_batch got an empty list of samples.")
    for index, sample in enumerate(samples):
        keys = ("tokens", "labels", "context", *(key for key in OPTIONAL_KEYS if key in sample))
        lengths = {key: len(sample[key]) for key in keys}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Sample {index} of the batch has fields of different lengths: {lengths}.")
    width = max(len(sample["tokens"]) for sample in samples)
    batch = {
        "tokens": torch.full((len(samples), width), padding_idx, dtype=torch.long),
        "labels": torch.full((len(samples), width), ignore_idx, dtype=torch.long),
        "context": torch.ones((len(samples), width), dtype=torch.bool),
        "doc": torch.zeros((len(samples), width), dtype=torch.long),
        "valid": torch.zeros((len(samples), width), dtype=torch.bool),
    }
    for row, sample in enumerate(samples):
        n = len(sample["tokens"])
        batch["tokens"][row, :n] = torch.as_tensor(sample["tokens"], dtype=torch.long)
        batch["labels"][row, :n] = torch.as_tensor(sample["labels"], dtype=torch.long)
        batch["context"][row, :n] = torch.as_tensor(sample["context"], dtype=torch.bool)
        doc = torch.as_tensor(sample["doc"], dtype=torch.long) if "doc" in sample else torch.zeros(n, dtype=torch.long)
        batch["doc"][row, :n] = doc
        batch["doc"][row, n:] = (int(doc.max()) + 1) if n else 0
        batch["valid"][row, :n] = torch.as_tensor(sample["valid"], dtype=torch.bool) if "valid" in sample else True
    indexed = ["sample_index" in sample for sample in samples]
    if any(indexed) and not all(indexed):
        raise ValueError("Some samples of the batch have `sample_index` and some do not.")
    if all(indexed):
        width = max(len(sample["sample_index"]) for sample in samples)
        batch["sample_index"] = torch.full((len(samples), width), -1, dtype=torch.long)
        for row, sample in enumerate(samples):
            batch["sample_index"][row, : len(sample["sample_index"])] = torch.as_tensor(sample["sample_index"])
    return batch
