"""Inference-time adaptation (paper Appendix B.3): one inner step on the prompt before answering.

The fast weights of training (LoRA pairs on the FFN of the top layers, A drawn
as in training, B = 0) take one SGD step on the next-token loss over the prompt
with causal attention, each gradient clipped on its own; the answer is then
produced with them, and they are dropped. The base weights never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torchtune.modules import TransformerDecoder

from focusft.bilevel import InnerLoopConfig, fast_weight_leaves, inner_sgd_update
from focusft.eval.decoding import LayerFastWeights, final_hidden
from focusft.fast_weights import FastWeightConfig, FastWeightSlots

# Positions whose logits are materialised at once in the prompt loss (the rest are recomputed in backward).
LOSS_CHUNK = 2048


@dataclass(frozen=True)
class AdaptationConfig:
    """One inner step (``inner.steps`` is 1) with the paper's inner lr and clip; ``seed`` draws A."""

    inner: InnerLoopConfig = field(default_factory=lambda: InnerLoopConfig(steps=1))
    fast: FastWeightConfig = field(default_factory=FastWeightConfig)
    seed: int = 0


def _chunk_loss(model: TransformerDecoder, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model.output(hidden).float(), targets, reduction="sum")


def adapt_on_prompt(
    model: TransformerDecoder, slots: FastWeightSlots, prompt: list[int], config: AdaptationConfig
) -> LayerFastWeights:
    """Fast weights after ``config.inner.steps`` steps of mean next-token loss over ``prompt``.

    Every prompt starts from the same draw (``config.seed``), so a request's answer
    does not depend on which requests were evaluated before it. A prompt of one
    token has no next-token target (the initial fast weights, B = 0, leave the model
    unchanged), and a non-finite loss or gradient stops at the fast weights reached so far.
    """
    device = model.tok_embeddings.weight.device
    fast = slots.init([config.seed], device=device)  # one document: stacked [1, ...]
    if len(prompt) < 2:
        return _single(fast)
    tokens = torch.as_tensor(prompt, device=device)[None]
    targets = tokens[0, 1:]
    for _ in range(config.inner.steps):
        leaves, flat = fast_weight_leaves(fast)
        with torch.enable_grad():
            hidden = final_hidden(model, tokens[:, :-1], fast_weights=_single(leaves))[0]
            loss = sum(
                checkpoint(
                    _chunk_loss, model, hidden[i : i + LOSS_CHUNK], targets[i : i + LOSS_CHUNK], use_reentrant=False
                )
                for i in range(0, len(targets), LOSS_CHUNK)
            ) / len(targets)
            grads = torch.autograd.grad(loss, flat)
        fast, applied = inner_sgd_update(leaves, grads, loss.reshape(1), config.inner)
        if not applied.item():
            break
    return _single(fast)


def _single(fast: LayerFastWeights) -> LayerFastWeights:
    """The one document's fast weights out of a stack of one."""
    return {layer: {name: t[0] for name, t in ws.items()} for layer, ws in fast.items()}
