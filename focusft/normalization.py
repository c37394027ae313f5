"""How an optimizer step's outer loss is normalised: per response token or per document.

docs/DESIGN.md section 3b, "Outer-loss normalisation":

- ``token``: the sum of the global batch's response-token losses ÷ its response tokens.
- ``sample``: each document's mean response loss, averaged over the global batch's
  documents (the authors' HF-Trainer code with batch 1 per GPU: every sample weighs the
  same, however long its response).

Each micro-batch gives a numerator (backpropagated as it is) and a weight; the step
divides the gradient by the weights summed over the micro-batches it accumulated and
all-reduced over the processes, so the result does not depend on how the documents
are packed, batched, accumulated or spread over processes. A document counts when it
has a response token (zero-weight padding and fully truncated responses do not).
A document whose tokens are split over processes (sequence parallelism) needs its
response-token count summed over those processes before the division in ``sample``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from focusft.documents import document_starts
from focusft.masks import TokenLayout
from focusft.sequence_parallel import WHOLE_ROW, SequenceShard
from focusft.split_decoder import IGNORE_INDEX

LossNormalization = Literal["token", "sample"]
LOSS_NORMALIZATIONS: tuple[str, ...] = get_args(LossNormalization)

DESCRIPTIONS = {
    "token": "sum of the global batch's response-token losses ÷ its response tokens",
    "sample": "each document's mean response loss, averaged over the global batch's documents",
}


@dataclass(frozen=True)
class OuterLoss:
    """One micro-batch's share of a step's outer loss ``Σ loss / Σ weight``.

    Attributes:
        loss: numerator to backpropagate: the summed response-token losses (``token``)
            or the summed per-document means (``sample``).
        weight: denominator: response tokens (``token``) or documents (``sample``).
        documents: documents with at least one response token (either way, for the log).
    """

    loss: torch.Tensor
    weight: torch.Tensor
    documents: torch.Tensor


def document_of_tokens(layout: TokenLayout) -> torch.Tensor:
    """``[b, s]`` index of each token's document, counted over the whole micro-batch; -1 on padding.

    A document is a run of valid tokens with one ``doc`` id in a row (docs/DESIGN.md section 2).
    """
    starts = document_starts(layout.valid, layout.doc)
    return torch.where(layout.valid, starts.flatten().cumsum(0).view_as(starts) - 1, -1)


def outer_loss(
    token_losses: torch.Tensor,
    labels: torch.Tensor,
    layout: TokenLayout,
    normalization: LossNormalization,
    shard: SequenceShard = WHOLE_ROW,
) -> OuterLoss:
    """The micro-batch's numerator and weight from its ``[n]`` response-token losses.

    ``token_losses`` are those of the positions where the shifted ``labels`` are not
    ignored, in row-major order (:func:`focusft.split_decoder.response_token_losses`).
    Under sequence parallelism ``labels`` and ``token_losses`` cover this rank's ``shard``
    of the rows and ``layout`` the whole rows: a document's response-token count is summed
    over the SP group before ``sample`` divides by it, and documents are counted on the
    group's first rank only, so the step's sums over all processes count each once.
    With ``token`` the numerator is ``token_losses.sum()``, exactly the loss the recipe
    backpropagated before this setting existed. No host synchronisation.
    """
    response = labels != IGNORE_INDEX
    document = document_of_tokens(layout)[:, shard.columns(layout.shape[1])][response]
    counts = shard.total(torch.bincount(document, minlength=layout.shape[0] * layout.shape[1]))
    documents = (counts > 0).sum() * (shard.rank == 0)
    if normalization == "token":
        return OuterLoss(token_losses.sum(), response.sum(), documents)
    if normalization != "sample":
        raise ValueError(f"Unknown loss normalization {normalization!r}; expected one of {LOSS_NORMALIZATIONS}.")
    sums = token_losses.new_zeros(counts.shape).index_add_(0, document, token_losses)
    return OuterLoss((sums / counts.clamp(min=1)).sum(), documents, documents)
