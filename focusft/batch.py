"""The batch contract between the data pipeline and the training step.

A collated batch is a dict of ``[b, s]`` tensors:

- ``tokens`` (long): token ids.
- ``labels`` (long): the token id where the token is trained on, else ``IGNORE_INDEX``;
  *not* shifted (torchtune's convention).
- ``context`` (bool): True where the token is not trained on (system, user, tool
  output, chat-template tokens). Drives the bidirectional-context mask.
- ``doc`` (long, optional): document id of each token in a packed row; padding has
  an id of its own. Default: one document per row.
- ``valid`` (bool, optional): False on padding. Default: all True.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from focusft.masks import TokenLayout, document_positions
from focusft.split_decoder import IGNORE_INDEX

REQUIRED_KEYS = ("tokens", "labels", "context")


@dataclass
class MicroBatch:
    """What one training micro-batch needs on the device."""

    tokens: torch.Tensor
    labels: torch.Tensor  # shifted: position t holds the target for token t+1
    layout: TokenLayout
    input_pos: torch.Tensor


def prepare_batch(batch: dict[str, torch.Tensor], device: torch.device | str) -> MicroBatch:
    """Check a collated batch, move it to ``device`` and shift its labels.

    A position never predicts the first token of the next packed document.
    """
    missing = [key for key in REQUIRED_KEYS if key not in batch]
    if missing:
        raise KeyError(f"Batch is missing {missing}; a FocuSFT batch has {REQUIRED_KEYS} (+ optional doc, valid).")
    tokens = batch["tokens"].to(device)
    context = batch["context"].to(device=device, dtype=torch.bool)
    doc = batch["doc"].to(device) if "doc" in batch else torch.zeros_like(tokens)
    valid = batch["valid"].to(device=device, dtype=torch.bool) if "valid" in batch else torch.ones_like(context)
    layout = TokenLayout(context=context, doc=doc, valid=valid)

    labels = batch["labels"].to(device)
    if labels.shape != tokens.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} differs from tokens shape {tuple(tokens.shape)}.")
    shifted = torch.full_like(labels, IGNORE_INDEX)
    same_doc = doc[:, 1:] == doc[:, :-1]
    shifted[:, :-1] = torch.where(same_doc, labels[:, 1:], IGNORE_INDEX)
    return MicroBatch(tokens=tokens, labels=shifted, layout=layout, input_pos=document_positions(doc))
