"""A torchtune decoder run in two stages around its first adapted layer.

Layers below the first fast-weight layer compute the same output in every inner
step and in the outer pass, so :class:`SplitDecoder` computes that *trunk* once per
micro-batch and runs only the *head* (adapted layers, final norm, output) K+1 times.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchtune import training
from torchtune.modules import TransformerDecoder, TransformerSelfAttentionLayer

from focusft.fast_weights import FastWeights, FastWeightSlots, run_layer
from focusft.loss import token_cross_entropy
from focusft.masks import AttentionMask

IGNORE_INDEX = -100


class SplitDecoder(nn.Module):
    """Wraps a ``TransformerDecoder``: ``model("trunk", ...)`` then ``model("head", ...)``.

    Both stages go through ``forward`` because FSDP2 runs its root hooks (lazy init,
    unsharding the embeddings and output projection) only when the root module is
    called. Activation checkpointing is applied here rather than with torchtune's
    module wrappers: fast weights are passed with ``functional_call``, and the
    recomputation in the backward pass must see them too, so the checkpointed
    function is the functional call itself.

    ``activation_checkpointing`` covers the trunk and the outer pass. An inner pass
    (one whose fast weights require grad) is followed at once by its own backward,
    which needs every activation of the adapted layers: checkpointing it saves
    memory only at the price of recomputing those layers' forward, so it is a
    separate switch, ``inner_activation_checkpointing`` (off by default).
    """

    def __init__(
        self,
        decoder: TransformerDecoder,
        slots: FastWeightSlots,
        activation_checkpointing: bool = False,
        inner_activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.decoder = decoder
        self.split = slots.first_layer
        self.activation_checkpointing = activation_checkpointing
        self.inner_activation_checkpointing = inner_activation_checkpointing

    def forward(self, stage: Literal["trunk", "head"], *args, **kwargs):
        if stage == "trunk":
            return self._trunk(*args, **kwargs)
        if stage == "head":
            return self._head(*args, **kwargs)
        raise ValueError(f"Unknown stage {stage!r}; expected 'trunk' or 'head'.")

    def _trunk(self, tokens: torch.Tensor, *, mask: AttentionMask, input_pos: torch.Tensor) -> torch.Tensor:
        """Embeddings and the layers without fast weights: ``[b, s] -> [b, s, d]``."""
        h = self.decoder.tok_embeddings(tokens)
        for layer in self.decoder.layers[: self.split]:
            h = self._run_layer(layer, h, mask, input_pos, None)
        return h

    def _head(
        self,
        hidden: torch.Tensor,
        *,
        mask: AttentionMask,
        input_pos: torch.Tensor,
        labels: torch.Tensor,
        fast_weights: dict[int, FastWeights] | None = None,
    ) -> torch.Tensor:
        """Adapted layers, then the cross-entropy of each response token (:func:`response_token_losses`)."""
        h = hidden
        for index in range(self.split, len(self.decoder.layers)):
            fast = fast_weights[index] if fast_weights is not None else None
            h = self._run_layer(self.decoder.layers[index], h, mask, input_pos, fast)
        return response_token_losses(self.decoder, h, labels)

    def _run_layer(
        self,
        layer: nn.Module,
        h: torch.Tensor,
        mask: AttentionMask,
        input_pos: torch.Tensor,
        fast: FastWeights | None,
    ) -> torch.Tensor:
        def run(x: torch.Tensor) -> torch.Tensor:
            return run_layer(layer, x, fast, mask=mask, input_pos=input_pos)

        inner_pass = fast is not None and any(t.requires_grad for t in fast.values())
        enabled = self.inner_activation_checkpointing if inner_pass else self.activation_checkpointing
        if enabled and torch.is_grad_enabled():
            return checkpoint(run, h, use_reentrant=False)
        return run(h)


def response_token_losses(decoder: TransformerDecoder, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """fp32 next-token cross-entropy of each position with a label, in row-major order.

    Only those positions go through the final norm and the output projection: with a
    150K vocabulary, context positions' logits would be most of the head's cost. Their
    logits are made chunk by chunk (:func:`focusft.loss.token_cross_entropy`).
    """
    selected = labels != IGNORE_INDEX
    return token_cross_entropy(decoder.norm, decoder.output, hidden[selected], labels[selected])


def shard_split_decoder(model: SplitDecoder, *, reshard_after_forward: bool = True, cpu_offload: bool = False) -> None:
    """FSDP2: one unit per transformer layer, the wrapper as root (embeddings, norm, output)."""
    training.shard_model(
        model,
        [lambda _, module: isinstance(module, TransformerSelfAttentionLayer)],
        cpu_offload=cpu_offload,
        reshard_after_forward=reshard_after_forward,
    )
