"""Synthetic long-context rows with the shape of the training data: long context turns, short responses."""

from __future__ import annotations

import torch

from focusft.masks import TokenLayout
from focusft.split_decoder import IGNORE_INDEX

# Two exchanges per row: a context turn (system + user + tool output) then a response,
# with 10% of the tokens in responses.
TURN_FRACTIONS = ((True, 0.45), (False, 0.05), (True, 0.45), (False, 0.05))


def context_flags(seq_len: int) -> torch.Tensor:
    """``[seq_len]`` bool, True on context tokens, turns as :data:`TURN_FRACTIONS`."""
    flags = torch.zeros(seq_len, dtype=torch.bool)
    start = 0
    for index, (is_context, fraction) in enumerate(TURN_FRACTIONS):
        end = seq_len if index == len(TURN_FRACTIONS) - 1 else start + round(fraction * seq_len)
        flags[start:end] = is_context
        start = end
    return flags


def synthetic_row(seq_len: int, vocab_size: int, seed: int) -> dict[str, list]:
    """One unpacked sample in the dataset format of :mod:`focusft.batch` (labels unshifted)."""
    tokens = torch.randint(0, vocab_size, (seq_len,), generator=torch.Generator().manual_seed(seed))
    context = context_flags(seq_len)
    labels = torch.where(context, IGNORE_INDEX, tokens)
    return {"tokens": tokens.tolist(), "labels": labels.tolist(), "context": context.tolist()}


def synthetic_dataset(tokenizer, num_samples: int, seq_len: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """A recipe ``dataset`` component (``tokenizer`` is unused): the same rows for every recipe."""
    return [synthetic_row(seq_len, vocab_size, seed + i) for i in range(num_samples)]


def synthetic_batch(seq_len: int, vocab_size: int, seed: int, device: torch.device | str):
    """``tokens [1, s]``, shifted ``labels [1, s]`` and the layout of one row."""
    row = synthetic_row(seq_len, vocab_size, seed)
    tokens = torch.tensor([row["tokens"]], device=device)
    context = torch.tensor([row["context"]], device=device)
    labels = torch.full_like(tokens, IGNORE_INDEX)
    labels[:, :-1] = torch.tensor([row["labels"]], device=device)[:, 1:]
    return tokens, labels, TokenLayout.single_document(context)
