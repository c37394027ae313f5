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
- ``sample_index`` (long, optional, ``[b, max_docs]``): the dataset index of the
  document with id ``j`` of row ``r`` at ``[r, j]``, -1 past a row's last document.
  It seeds each document's fast weights, so bilevel training needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from focusft.documents import Documents, FastWeightScope
from focusft.masks import TokenLayout, document_positions
from focusft.sequence_parallel import WHOLE_ROW, SequenceShard
from focusft.split_decoder import IGNORE_INDEX

REQUIRED_KEYS = ("tokens", "labels", "context")


@dataclass
class MicroBatch:
    """What one training micro-batch needs on the device.

    ``tokens``, ``labels`` and ``input_pos`` cover this rank's shard of the rows (all of
    them without sequence parallelism); ``layout`` is the whole rows', which the mask needs.
    """

    tokens: torch.Tensor
    labels: torch.Tensor  # shifted: position t holds the target for token t+1
    layout: TokenLayout
    input_pos: torch.Tensor
    documents: Documents


def prepare_batch(
    batch: dict[str, torch.Tensor],
    device: torch.device | str,
    fast_weight_scope: FastWeightScope = "document",
    shard: SequenceShard = WHOLE_ROW,
) -> MicroBatch:
    """Check a collated batch, find its documents, move it to ``device`` and shift its labels.

    A position never predicts the first token of the next packed document. With a
    sequence ``shard``, rows are padded to a multiple of its size; labels, positions and
    documents come from the whole rows, then this rank keeps its shard of them.
    """
    missing = [key for key in REQUIRED_KEYS if key not in batch]
    if missing:
        raise KeyError(f"Batch is missing {missing}; a FocuSFT batch has {REQUIRED_KEYS} (+ optional doc, valid).")
    if batch["labels"].shape != batch["tokens"].shape:
        raise ValueError(
            f"labels shape {tuple(batch['labels'].shape)} differs from tokens shape {tuple(batch['tokens'].shape)}."
        )
    batch = shard.pad(batch)
    tokens, labels = batch["tokens"], batch["labels"]
    context = batch["context"].bool()
    doc = batch["doc"] if "doc" in batch else torch.zeros_like(tokens)
    valid = batch["valid"].bool() if "valid" in batch else torch.ones_like(context)
    layout = TokenLayout(context=context, doc=doc, valid=valid)
    documents = Documents.from_layout(layout, batch.get("sample_index"), fast_weight_scope, shard)

    shifted = torch.full_like(labels, IGNORE_INDEX)
    same_doc = doc[:, 1:] == doc[:, :-1]
    shifted[:, :-1] = torch.where(same_doc, labels[:, 1:], IGNORE_INDEX)
    columns = shard.columns(tokens.shape[1])
    return MicroBatch(
        tokens=tokens[:, columns].contiguous().to(device),
        labels=shifted[:, columns].contiguous().to(device),
        layout=layout.to(device),
        input_pos=document_positions(doc)[:, columns].contiguous().to(device),
        documents=documents.to(device),
    )
