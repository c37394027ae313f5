"""FocuSFT computed the straightforward way, as the paper's code does.

Every inner step and the outer step run the whole decoder (all layers, every
position's logits), with LoRA added by forward hooks on the base projections. It
shares nothing with :mod:`focusft.bilevel` or :mod:`focusft.split_decoder`, so it is
both the speed baseline of the benchmark and an independent check of the optimised
step (tests/test_reference_step.py). One document per micro-batch (batch 1, unpacked),
where per-document and per-micro-batch fast weights are the same thing.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchtune.modules import TransformerDecoder

from focusft.split_decoder import IGNORE_INDEX

# (layer index, torchtune projection attribute) -> (A [r, in], B [out, r])
LoRAWeights = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def lora_from_fast_weights(fast: dict) -> LoRAWeights:
    """Convert the optimised step's φ_0 (``{layer: {"mlp.w1.fast_a": A, ...}}``) to :data:`LoRAWeights`.

    A leading document dimension of size 1 is dropped.
    """
    lora: LoRAWeights = {}
    for layer, tensors in fast.items():
        for name, a in tensors.items():
            if not name.endswith("fast_a"):
                continue
            b = tensors[name.removesuffix("fast_a") + "fast_b"]
            a, b = (t[0] if t.dim() == 3 else t for t in (a, b))
            lora[(int(layer), name.split(".")[1])] = (a, b)
    return lora


@contextmanager
def lora_hooks(decoder: TransformerDecoder, lora: LoRAWeights, scale: float):
    """Add ``scale · (x Aᵀ) Bᵀ`` to each adapted projection's output while active; ``lora`` is read at call time."""

    def hook(key):
        def add_low_rank(module: nn.Module, args, output):
            a, b = lora[key]
            x = args[0]
            return output + scale * F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype))

        return add_low_rank

    handles = [getattr(decoder.layers[i].mlp, proj).register_forward_hook(hook((i, proj))) for i, proj in lora]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def full_forward_loss(decoder, tokens, labels, mask, input_pos, activation_checkpointing: bool) -> torch.Tensor:
    """Mean response-token loss from the whole decoder's logits at every position."""
    h = decoder.tok_embeddings(tokens)
    for layer in decoder.layers:
        if activation_checkpointing and torch.is_grad_enabled():
            h = checkpoint(lambda x, layer=layer: layer(x, mask=mask, input_pos=input_pos), h, use_reentrant=False)
        else:
            h = layer(h, mask=mask, input_pos=input_pos)
    logits = decoder.output(decoder.norm(h)).float()
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def straightforward_focusft_step(
    decoder: TransformerDecoder,
    lora: LoRAWeights,
    scale: float,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    mask,
    input_pos: torch.Tensor,
    steps: int,
    lr: float,
    grad_clip: float,
    activation_checkpointing: bool = False,
) -> tuple[torch.Tensor, list[float]]:
    """K inner SGD steps on the LoRA pairs (per-tensor clipping), then the outer loss and its backward into θ.

    Returns the outer mean loss and the inner losses before each step.
    """
    if tokens.shape[0] != 1:
        raise ValueError("The straightforward reference runs one document per micro-batch (batch 1).")
    current = {key: (a.detach().clone(), b.detach().clone()) for key, (a, b) in lora.items()}
    inner_losses = []
    with lora_hooks(decoder, current, scale):
        for _ in range(steps):
            for pair in current.values():
                for t in pair:
                    t.requires_grad_()
            loss = full_forward_loss(decoder, tokens, labels, mask, input_pos, activation_checkpointing)
            grads = iter(torch.autograd.grad(loss, [t for pair in current.values() for t in pair]))
            inner_losses.append(loss.detach())
            with torch.no_grad():
                for key, pair in current.items():
                    current[key] = tuple(t - lr * _clip(next(grads), grad_clip) for t in pair)
        outer = full_forward_loss(decoder, tokens, labels, mask, input_pos, activation_checkpointing)
        outer.backward()  # inside the hooks: checkpointed layers recompute with φ_K
    return outer.detach(), torch.stack(inner_losses).tolist() if inner_losses else []


def _clip(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    norm = grad.norm()
    return grad * (max_norm / (norm + 1e-12)) if norm > max_norm else grad
