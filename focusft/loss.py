"""Per-token cross-entropy through the final norm and output projection, in chunks of tokens.

Qwen2.5's vocabulary has 152K entries: the fp32 logits of 8K response tokens would
take 5 GB, and autograd would keep them for the backward pass. Here each chunk of
tokens is checkpointed: its logits exist only while that chunk's loss is computed,
and are recomputed chunk by chunk in the backward pass, so at most one chunk's
``[chunk_size, vocab]`` logits (and their gradient) are alive at any time.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# 1024 tokens × 152K vocabulary × 4 bytes ≈ 0.6 GB of fp32 logits per chunk.
DEFAULT_CHUNK_TOKENS = 1024


def _chunk_losses(norm: nn.Module, output: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = output(norm(hidden)).float()
    return F.cross_entropy(logits, targets, reduction="none")


def token_cross_entropy(
    norm: nn.Module,
    output: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """fp32 next-token cross-entropy of each row of ``hidden`` ``[n, d]`` against ``targets`` ``[n]``.

    Returns ``[n]`` fp32 losses (the caller reduces them). With ``n <= chunk_size`` this
    is the plain computation; above it, each chunk's logits are recomputed in the
    backward pass (one extra output-projection forward) instead of being kept.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has {hidden.shape[0]} rows but targets has {targets.shape[0]}.")
    if hidden.shape[0] <= chunk_size:
        return _chunk_losses(norm, output, hidden, targets)
    chunk = _chunk_losses
    if torch.is_grad_enabled():
        chunk = partial(checkpoint, _chunk_losses, use_reentrant=False)
    return torch.cat([chunk(norm, output, h, t) for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size))])
