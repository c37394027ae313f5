"""The documents of a micro-batch: which tokens share one set of fast weights.

docs/DESIGN.md section 1: each document (one sample: a row of an unpacked batch, or
one of several samples packed in a row) runs the inner loop on fast weights of its
own. :class:`Documents` says which document each token belongs to and how the
stacked fast weights ``[D, ...]`` reach the tokens:

- ``shared``: one document (or ``fast_weight_scope: micro_batch``): plain LoRA.
- ``rows``: one document per row: a batched matmul over rows, no copies.
- ``chunks``: packed rows: each document's tokens in chunks of at most
  :data:`CHUNK_TOKENS`, padded, and multiplied with a bmm against their
  document's fast weights (:class:`focusft.fast_weights.ChunkedLowRank`).

Everything here is built on the host from the collated batch, before it moves to
the device, so the training step never waits on the device for it.

Under sequence parallelism a rank holds one shard of each row (:mod:`focusft.sequence_parallel`):
documents are found in the whole rows, ``token_document`` and the chunks cover the shard,
and :meth:`Documents.total` sums per-document tensors over the ranks holding the other shards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch

from focusft.fast_weights import FastWeights
from focusft.masks import TokenLayout
from focusft.sequence_parallel import WHOLE_ROW, SequenceShard

FastWeightScope = Literal["document", "micro_batch"]
FAST_WEIGHT_SCOPES: tuple[str, ...] = get_args(FastWeightScope)
Routing = Literal["shared", "rows", "chunks"]

# Longest run of one document's tokens multiplied as one bmm slice: short documents are
# padded to the longest one (up to this), long ones are cut into several chunks.
CHUNK_TOKENS = 128


def fast_weight_seed(run_seed: int, epoch: int, sample_index: int) -> int:
    """Seed of a document's φ_0: the same for a sample packed or not, on any number of processes."""
    return hash((run_seed, epoch, sample_index)) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Documents:
    """Which fast weights each token of a ``[b, s]`` micro-batch uses.

    Attributes:
        count: number of fast-weight sets ``D`` (at least 1): one per document, or one
            for the whole micro-batch with ``fast_weight_scope: micro_batch``.
        found: documents in the micro-batch.
        token_document: ``[b, s]`` document index in ``0 .. D-1`` of each token of this
            rank's shard of the rows (all of them without SP), -1 on padding.
        sample_index: each document's index in the dataset (seeds its φ_0), or None if
            the batch did not carry them.
        routing: how stacked fast weights reach the tokens (module docstring).
        chunk_tokens: ``[chunks, c]`` flat (row-major) token positions of each chunk,
            padded with ``b * s``; only for ``chunks`` routing.
        chunk_document: ``[chunks]`` document of each chunk; only for ``chunks`` routing.
        shard: which shard of the rows this rank holds (the whole rows without SP).
    """

    count: int
    found: int
    token_document: torch.Tensor
    sample_index: tuple[int, ...] | None
    routing: Routing
    chunk_tokens: torch.Tensor | None = None
    chunk_document: torch.Tensor | None = None
    shard: SequenceShard = WHOLE_ROW

    @classmethod
    def from_layout(
        cls,
        layout: TokenLayout,
        sample_index: torch.Tensor | None = None,
        scope: FastWeightScope = "document",
        shard: SequenceShard = WHOLE_ROW,
    ) -> Documents:
        """Documents of a collated batch (the whole rows), routed for this rank's ``shard`` of them.

        ``sample_index`` is ``[b, max_docs]``: the dataset index of the document with id
        ``j`` in row ``r`` at ``[r, j]`` (-1 where a row has fewer documents).
        A document is a run of valid tokens with one ``doc`` id; an id must not recur
        later in its row (the mask would join the two runs into one document).
        """
        if scope not in FAST_WEIGHT_SCOPES:
            raise ValueError(f"Unknown fast_weight_scope {scope!r}; expected one of {FAST_WEIGHT_SCOPES}.")
        b, s = layout.shape
        valid, doc = layout.valid.cpu(), layout.doc.cpu()
        starts = document_starts(valid, doc)
        count = int(starts.sum())
        row_and_doc = torch.arange(b)[:, None] * (int(doc.max() - doc.min()) + 1) + (doc - doc.min())
        if count != len(torch.unique(row_and_doc[valid])):
            raise ValueError("A row has a document id that recurs after another document; ids must be runs.")
        seeds = _sample_index_per_document(starts, doc, sample_index) if sample_index is not None else None
        columns = shard.columns(s)
        if scope == "micro_batch" or count <= 1:
            token_document = torch.where(valid, 0, -1)[:, columns]
            return cls(1, count, token_document, seeds[:1] if seeds else seeds, "shared", shard=shard)
        token_document = torch.where(valid, starts.flatten().cumsum(0).view(b, s) - 1, -1)[:, columns]
        if count == b and bool(starts.sum(dim=1).eq(1).all()):
            return cls(count, count, token_document, seeds, "rows", shard=shard)
        chunk_tokens, chunk_document = _chunks(token_document, count)
        return cls(count, count, token_document, seeds, "chunks", chunk_tokens, chunk_document, shard)

    def total(self, per_document: torch.Tensor) -> torch.Tensor:
        """A per-document sum over the whole rows: this shard's part summed over the SP group.

        The one place where documents split over ranks are joined (docs/DESIGN.md section 3b);
        without sequence parallelism it returns its input.
        """
        return self.shard.total(per_document)

    def to(self, device: torch.device | str) -> Documents:
        move = {
            name: getattr(self, name).to(device, non_blocking=True)
            for name in ("token_document", "chunk_tokens", "chunk_document")
            if getattr(self, name) is not None
        }
        return replace(self, **move)

    def at_positions(self, positions: torch.Tensor) -> Documents:
        """The tokens at ``positions`` (``[N]`` flat row-major positions of the ``[b, s]`` shard) as one row ``[1, N]``.

        Routes the fast weights of a layer run on those tokens alone: the last layer, on the
        response positions (:class:`focusft.split_decoder.SplitDecoder`). Rows and packed
        documents become chunks, made on the host (one device sync per micro-batch).
        """
        token_document = self.token_document.flatten()[positions].unsqueeze(0)
        if self.routing == "shared":
            return replace(self, token_document=token_document)
        chunk_tokens, chunk_document = _chunks(token_document.cpu(), self.count)
        device = token_document.device
        return replace(
            self,
            token_document=token_document,
            routing="chunks",
            chunk_tokens=chunk_tokens.to(device),
            chunk_document=chunk_document.to(device),
        )

    def slot_values(self, fast: dict[int, FastWeights]) -> dict[int, FastWeights]:
        """What to fill into each layer's fast-weight slots for stacked fast weights ``[D, ...]``."""
        if self.routing == "shared":
            return {layer: {name: t[0] for name, t in ws.items()} for layer, ws in fast.items()}
        if self.routing == "rows":
            return fast
        routing = {}
        for name in next(iter(fast.values())):
            if name.endswith("fast_a"):
                prefix = name.removesuffix("fast_a")
                routing[prefix + "fast_chunk_tokens"] = self.chunk_tokens
                routing[prefix + "fast_chunk_document"] = self.chunk_document
        return {layer: {**ws, **routing} for layer, ws in fast.items()}


def document_starts(valid: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` True at the first token of each document: a run of valid tokens with one ``doc`` id."""
    starts = valid.clone()
    starts[:, 1:] &= (doc[:, 1:] != doc[:, :-1]) | ~valid[:, :-1]
    return starts


def _sample_index_per_document(starts: torch.Tensor, doc: torch.Tensor, sample_index: torch.Tensor) -> tuple[int, ...]:
    rows, positions = starts.nonzero(as_tuple=True)
    ids = doc[rows, positions]
    if bool((ids < 0).any()) or bool((ids >= sample_index.shape[1]).any()):
        raise ValueError(
            f"Document ids {ids.tolist()} have no entry in sample_index of shape {list(sample_index.shape)}."
        )
    found = sample_index.cpu()[rows, ids]
    if bool((found < 0).any()):
        missing = [(int(r), int(i)) for r, i, f in zip(rows, ids, found) if f < 0]
        raise ValueError(f"sample_index has no dataset index for (row, document id) {missing}.")
    return tuple(found.tolist())


def _chunks(token_document: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each document's flat token positions, cut into chunks of ``c`` and padded with ``b * s``."""
    flat = token_document.flatten()
    positions = (flat >= 0).nonzero().squeeze(1)  # row-major, so grouped by document
    docs = flat[positions]
    lengths = torch.bincount(docs, minlength=count)
    width = max(1, min(CHUNK_TOKENS, int(lengths.max())))  # a shard may hold no valid token
    per_doc = (lengths + width - 1) // width
    first_chunk = per_doc.cumsum(0) - per_doc
    within = torch.arange(len(positions)) - (lengths.cumsum(0) - lengths)[docs]
    chunk_tokens = torch.full((int(per_doc.sum()), width), flat.numel(), dtype=torch.long)
    chunk_tokens[first_chunk[docs] + within // width, within % width] = positions
    return chunk_tokens, torch.repeat_interleave(torch.arange(count), per_doc)
