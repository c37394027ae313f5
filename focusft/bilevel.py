"""One FocuSFT micro-batch: K first-order inner steps on fast weights, then the outer loss.

docs/DESIGN.md section 1, steps 3-5. The caller builds the mask once (inner and outer
use the same one), calls :func:`bilevel_step`, scales and backpropagates
``result.loss``; the fast weights are dropped when the result goes out of scope.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from focusft.fast_weights import FastWeights, FastWeightSlots
from focusft.masks import AttentionMask
from focusft.split_decoder import SplitDecoder

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
        loss: outer cross-entropy summed over response tokens; the graph reaches θ only.
        num_tokens: response tokens in the micro-batch.
        inner_losses: ``[K+1]`` mean response loss under φ_0 … φ_K; entries k and k+1
            are the inner loss before and after step k (the last equals the outer mean).
        skipped_updates: inner updates skipped for a non-finite loss or gradient.
        fast_weight_delta_norm: ‖φ_K − φ_0‖ over all fast-weight tensors.
    """

    loss: torch.Tensor
    num_tokens: torch.Tensor
    inner_losses: torch.Tensor
    skipped_updates: torch.Tensor
    fast_weight_delta_norm: torch.Tensor


def clip_per_tensor(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``g · c / (‖g‖ + 1e-12)`` when ``‖g‖ > c``, else ``g``."""
    norm = torch.linalg.vector_norm(grad)
    factor = torch.where(norm > max_norm, max_norm / (norm + CLIP_EPS), torch.ones_like(norm))
    return grad * factor


def fast_weight_leaves(fast: dict[int, FastWeights]) -> tuple[dict[int, FastWeights], list[torch.Tensor]]:
    """Detached copies of ``fast`` that require grad, and the same tensors as a flat list."""
    leaves = {layer: {name: t.detach().requires_grad_() for name, t in ws.items()} for layer, ws in fast.items()}
    return leaves, [t for ws in leaves.values() for t in ws.values()]


def inner_sgd_update(
    leaves: dict[int, FastWeights], grads: Sequence[torch.Tensor], loss: torch.Tensor, inner: InnerLoopConfig
) -> tuple[dict[int, FastWeights], torch.Tensor]:
    """``φ ← φ − lr · clip(g)`` per tensor, or φ unchanged if the loss or a gradient is non-finite.

    Returns the new fast weights and whether the update was applied, without a host sync.
    """
    finite = torch.isfinite(loss) & torch.stack([torch.isfinite(g).all() for g in grads]).all()
    flat = [t.detach() for ws in leaves.values() for t in ws.values()]
    updated = iter(
        torch.where(finite, t - inner.lr * clip_per_tensor(g, inner.grad_clip), t) for t, g in zip(flat, grads)
    )
    return {layer: {name: next(updated) for name in ws} for layer, ws in leaves.items()}, finite


def bilevel_step(
    model: SplitDecoder,
    slots: FastWeightSlots,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    mask: AttentionMask,
    input_pos: torch.Tensor,
    inner: InnerLoopConfig | None,
    initial_fast_weights: dict[int, FastWeights] | None = None,
    generator: torch.Generator | None = None,
) -> BilevelResult:
    """Run one micro-batch; ``inner=None`` (bilevel off) or ``steps=0`` is plain SFT.

    ``labels`` are already shifted (position t holds the token t+1, or the ignore
    index where t+1 is not a response token). Fast weights start from
    ``initial_fast_weights`` or, if absent, are drawn from ``generator``.

    Every rank runs the same passes whatever its data (no early exit on an empty or
    non-finite micro-batch): FSDP all-gathers inside each layer need every rank to
    take part. A micro-batch without response tokens has zero loss and gradient, so
    its fast weights stay at φ_0.
    """
    trunk = model("trunk", tokens, mask=mask, input_pos=input_pos)
    head = dict(mask=mask, input_pos=input_pos, labels=labels)

    if inner is None or inner.steps == 0:
        loss, num_tokens = model("head", trunk, **head)
        zero = torch.zeros((), device=loss.device)
        return BilevelResult(loss, num_tokens, (loss.detach() / num_tokens.clamp(min=1)).reshape(1), zero, zero)

    if initial_fast_weights is None:
        if generator is None:
            raise ValueError("bilevel_step needs initial_fast_weights or a generator to draw them from.")
        initial_fast_weights = slots.init(generator, device=tokens.device)
    initial = {layer: {name: t.detach() for name, t in ws.items()} for layer, ws in initial_fast_weights.items()}

    fast = initial
    inner_input = trunk.detach()
    inner_losses = []
    skipped = torch.zeros((), dtype=torch.long, device=tokens.device)
    for _ in range(inner.steps):
        leaves, flat = fast_weight_leaves(fast)
        loss_sum, num_tokens = model("head", inner_input, fast_weights=leaves, **head)
        loss = loss_sum / num_tokens.clamp(min=1)
        grads = torch.autograd.grad(loss, flat)
        inner_losses.append(loss.detach())
        fast, applied = inner_sgd_update(leaves, grads, loss, inner)
        skipped += (~applied).long()

    loss, num_tokens = model("head", trunk, fast_weights=fast, **head)
    inner_losses.append(loss.detach() / num_tokens.clamp(min=1))
    delta = torch.linalg.vector_norm(
        torch.stack(
            [
                torch.linalg.vector_norm(fast[layer][name] - initial[layer][name])
                for layer in fast
                for name in fast[layer]
            ]
        )
    )
    return BilevelResult(loss, num_tokens, torch.stack(inner_losses), skipped, delta)
