"""One FocuSFT micro-batch: K first-order inner steps on per-document fast weights, then the outer loss.

docs/DESIGN.md section 1, steps 3-5, applied to each document on its own. The caller
builds the mask once (inner and outer use the same one), calls :func:`bilevel_step`,
scales and backpropagates ``result.loss``; the fast weights are dropped when the
result goes out of scope.

All documents of a micro-batch run their inner steps in the same passes: the fast
weights are stacked ``[D, ...]``, each token uses its own document's slice, and the
inner objective is the sum of the documents' mean losses. Documents never attend to
each other, so the gradient of that sum with respect to ``φ^(d)`` is exactly the
gradient of document ``d``'s own mean loss.

Under sequence parallelism a document's tokens may lie on several ranks: each rank
divides its part of the document's loss sum by the document's response tokens on all
ranks, and the losses and φ-gradients are summed over the ranks (:meth:`Documents.total`)
before they are reported, checked or clipped (docs/DESIGN.md section 3b).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from focusft.documents import Documents
from focusft.fast_weights import FastWeights, FastWeightSlots
from focusft.masks import AttentionMask
from focusft.split_decoder import IGNORE_INDEX, SplitDecoder, response_positions

CLIP_EPS = 1e-12


@dataclass(frozen=True)
class InnerLoopConfig:
    """Inner-loop hyperparameters (paper Table 5 defaults)."""

    steps: int = 2
    lr: float = 1.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"inner steps must be an integer >= 0, got {self.steps!r}.")
        if not math.isfinite(self.lr) or self.lr < 0:
            raise ValueError(f"inner lr must be a finite number >= 0, got {self.lr!r}.")
        if not math.isfinite(self.grad_clip) or self.grad_clip <= 0:
            raise ValueError(f"inner grad_clip must be a finite number > 0, got {self.grad_clip!r}.")


@dataclass
class BilevelResult:
    """What one micro-batch produced. Tensors stay on the device (no host sync).

    Attributes:
        loss: outer cross-entropy summed over response tokens (of this rank's sequence
            shard under SP); the graph reaches θ only.
        token_losses: ``[n]`` the outer cross-entropy of each of those response tokens (row-major),
            whose sum is ``loss`` (:mod:`focusft.normalization` weighs them per document).
        num_tokens: response tokens that ``loss`` sums over.
        inner_losses: ``[K+1]`` mean response loss under φ_0 … φ_K, averaged over
            documents weighted by their response tokens; entries k and k+1 are the inner
            loss before and after step k (the last equals the outer mean).
        document_losses: ``[K+1, D]`` each document's mean response loss under φ_0 … φ_K.
        document_tokens: ``[D]`` response tokens of each document (on all ranks under SP).
        skipped_updates: document updates skipped for a non-finite loss, gradient or result.
        delta_norms: ``[D]`` ‖φ_K − φ_0‖ of each document over all its fast-weight tensors.
        fast_weights: φ_K, stacked ``[D, ...]`` (empty when bilevel is off).
    """

    loss: torch.Tensor
    token_losses: torch.Tensor
    num_tokens: torch.Tensor
    inner_losses: torch.Tensor
    document_losses: torch.Tensor
    document_tokens: torch.Tensor
    skipped_updates: torch.Tensor
    delta_norms: torch.Tensor
    fast_weights: dict[int, FastWeights]


def clip_per_tensor(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Per document (dim 0): ``g · c / (‖g‖ + 1e-12)`` when ``‖g‖ > c``, else ``g``."""
    norm = torch.linalg.vector_norm(grad.flatten(1), dim=1)
    factor = torch.where(norm > max_norm, max_norm / (norm + CLIP_EPS), torch.ones_like(norm))
    return grad * factor.view(-1, *([1] * (grad.dim() - 1)))


def _finite_per_document(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t).flatten(1).all(dim=1)


def fast_weight_leaves(fast: dict[int, FastWeights]) -> tuple[dict[int, FastWeights], list[torch.Tensor]]:
    """Detached copies of ``fast`` that require grad, and the same tensors as a flat list."""
    leaves = {layer: {name: t.detach().requires_grad_() for name, t in ws.items()} for layer, ws in fast.items()}
    return leaves, [t for ws in leaves.values() for t in ws.values()]


def inner_sgd_update(
    leaves: dict[int, FastWeights], grads: Sequence[torch.Tensor], losses: torch.Tensor, inner: InnerLoopConfig
) -> tuple[dict[int, FastWeights], torch.Tensor]:
    """``φ^(d) ← φ^(d) − lr · clip(g^(d))`` per tensor and document, on stacked ``[D, ...]`` fast weights.

    A document keeps its φ when its loss (``losses [D]``), one of its gradients or one of
    its updated tensors is non-finite. Returns the new fast weights and ``[D]`` whether
    each document's update was applied, without a host sync.
    """
    flat = [t.detach() for ws in leaves.values() for t in ws.values()]
    updated = [t - inner.lr * clip_per_tensor(g, inner.grad_clip) for t, g in zip(flat, grads)]
    applied = torch.isfinite(losses)
    for tensor in (*grads, *updated):
        applied = applied & _finite_per_document(tensor)
    keep = iter(torch.where(applied.view(-1, *([1] * (t.dim() - 1))), u, t) for t, u in zip(flat, updated))
    return {layer: {name: next(keep) for name in ws} for layer, ws in leaves.items()}, applied


def bilevel_step(
    model: SplitDecoder,
    slots: FastWeightSlots,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    mask: AttentionMask,
    input_pos: torch.Tensor,
    inner: InnerLoopConfig | None,
    documents: Documents | None = None,
    initial_fast_weights: dict[int, FastWeights] | None = None,
) -> BilevelResult:
    """Run one micro-batch; ``inner=None`` (bilevel off) or ``steps=0`` is plain SFT.

    ``labels`` are already shifted (position t holds the token t+1, or the ignore
    index where t+1 is not a response token). ``documents`` defaults to one document
    spanning the micro-batch. ``initial_fast_weights`` are each document's φ_0,
    stacked ``[D, ...]`` (:meth:`FastWeightSlots.init`).

    Every rank runs the same passes whatever its data (no early exit on an empty or
    non-finite micro-batch): FSDP all-gathers inside each layer need every rank to
    take part. A document without response tokens has zero loss and gradient, so it
    keeps its φ_0 and contributes nothing.
    """
    if documents is None:
        documents = Documents(1, 1, torch.zeros_like(tokens), None, "shared")
    response_document = documents.token_document[labels != IGNORE_INDEX]
    local_tokens = torch.bincount(response_document, minlength=documents.count)
    document_tokens = documents.total(local_tokens)
    inner_loop = inner is not None and inner.steps > 0
    trunk = model("trunk", tokens, mask=mask, input_pos=input_pos, parted=inner_loop)
    head = dict(mask=mask, input_pos=input_pos, labels=labels, parted=inner_loop)

    def document_means(token_losses: torch.Tensor) -> torch.Tensor:
        """This rank's share of each document's mean loss (the whole mean without SP)."""
        sums = token_losses.new_zeros(documents.count).index_add_(0, response_document, token_losses)
        return sums / document_tokens.clamp(min=1)

    if not inner_loop:
        token_losses = model("head", trunk, **head)
        means = documents.total(document_means(token_losses.detach()))
        skipped = torch.zeros((), dtype=torch.long, device=tokens.device)
        return _result(token_losses, [means], local_tokens, document_tokens, skipped, torch.zeros_like(means), {})

    if initial_fast_weights is None:
        raise ValueError("bilevel_step needs initial_fast_weights (FastWeightSlots.init) when the inner loop runs.")
    initial = {layer: {name: t.detach() for name, t in ws.items()} for layer, ws in initial_fast_weights.items()}
    if (count := next(iter(next(iter(initial.values())).values())).shape[0]) != documents.count:
        raise ValueError(f"initial_fast_weights hold {count} document(s); the micro-batch has {documents.count}.")

    responses = documents.at_positions(response_positions(labels))

    def slot_values(fast: dict[int, FastWeights]) -> dict[int, FastWeights]:
        """Each head layer's slot values; the last layer's routed for the response tokens it runs on."""
        values = dict(documents.slot_values(fast))
        values[model.last] = responses.slot_values({model.last: fast[model.last]})[model.last]
        return values

    fast = initial
    inner_input = trunk.detach()
    losses = []
    skipped = torch.zeros((), dtype=torch.long, device=tokens.device)
    for _ in range(inner.steps):
        leaves, flat = fast_weight_leaves(fast)
        shares = document_means(model("head", inner_input, fast_weights=slot_values(leaves), **head))
        grads = [documents.total(g) for g in torch.autograd.grad(shares.sum(), flat)]
        means = documents.total(shares.detach())
        losses.append(means)
        fast, applied = inner_sgd_update(leaves, grads, means, inner)
        skipped += (~applied).sum()

    token_losses = model("head", trunk, fast_weights=slot_values(fast), **head)
    losses.append(documents.total(document_means(token_losses.detach())))
    squares = sum(
        torch.linalg.vector_norm((fast[layer][name] - initial[layer][name]).flatten(1), dim=1) ** 2
        for layer in fast
        for name in fast[layer]
    )
    return _result(token_losses, losses, local_tokens, document_tokens, skipped, squares.sqrt(), fast)


def _result(
    token_losses: torch.Tensor,
    losses: list[torch.Tensor],
    local_tokens: torch.Tensor,
    document_tokens: torch.Tensor,
    skipped: torch.Tensor,
    delta_norms: torch.Tensor,
    fast: dict[int, FastWeights],
) -> BilevelResult:
    document_losses = torch.stack(losses)
    weights = document_tokens.to(document_losses.dtype)
    inner_losses = (document_losses * weights).sum(dim=1) / weights.sum().clamp(min=1)
    return BilevelResult(
        loss=token_losses.sum(),
        token_losses=token_losses,
        num_tokens=local_tokens.sum(),
        inner_losses=inner_losses,
        document_losses=document_losses,
        document_tokens=document_tokens,
        skipped_updates=skipped,
        delta_norms=delta_norms,
        fast_weights=fast,
    )
