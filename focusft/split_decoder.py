"""A torchtune decoder run in two stages around its first fast weight.

Everything below the first fast weight computes the same output in every inner step and
in the outer pass: the layers below the first adapted layer and that layer's attention
sub-block (fast weights sit in the FFN projections only). :class:`SplitDecoder` computes
that *trunk* once per micro-batch and runs only the *head* (the first adapted layer's
FFN, the other adapted layers, final norm, output) K+1 times.

Only the response positions' outputs of the last layer reach the loss, so its FFN runs
on those positions alone (its attention still runs on every position: the keys and
values of the context are needed).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torchtune import training
from torchtune.modules import TransformerDecoder, TransformerSelfAttentionLayer

from focusft.activation_memory import ActivationOffload, CheckpointMode, run_checkpointed
from focusft.fast_weights import FastWeights, FastWeightSlots, run_layer
from focusft.loss import token_cross_entropy
from focusft.masks import AttentionMask
from focusft.mixins import add_mixin
from focusft.row_block_attention import install_row_block_attention

IGNORE_INDEX = -100
LayerPart = Literal["attention", "ffn"]


class LayerPartsMixin:
    """A ``TransformerSelfAttentionLayer`` that can run one of its sub-blocks alone, or keep some positions only.

    ``part="attention"``: ``x + attn(sa_norm(x))``; ``part="ffn"``: ``h + mlp(mlp_norm(h))``
    (each with torchtune's ``sa_scale`` / ``mlp_scale``); one after the other they are the
    layer's forward. ``outputs_at`` (``[N]`` flat row-major positions of ``x``'s ``[b, s]``)
    runs the FFN on those positions only and returns ``[1, N, d]``: the FFN and the residual
    are per position, so each kept row equals the whole layer's. Both are ``forward``
    arguments so that FSDP2's unshard hooks, ``functional_call`` and ``torch.compile`` see an
    ordinary call of the layer.
    """

    def forward(
        self,
        x: torch.Tensor,
        *,
        part: LayerPart | None = None,
        outputs_at: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if part not in (None, "attention", "ffn"):
            raise ValueError(f"Unknown layer part {part!r}; expected 'attention' or 'ffn'.")
        if part is None and outputs_at is None:
            return super().forward(x, **kwargs)
        if part == "attention" and outputs_at is not None:
            raise ValueError("outputs_at selects the FFN's positions; part='attention' runs no FFN.")
        h = x if part == "ffn" else self._attention_block(x, kwargs.get("mask"), kwargs.get("input_pos"))
        if part == "attention":
            return h
        if outputs_at is not None:
            h = h.flatten(0, 1).index_select(0, outputs_at).unsqueeze(0)
        return h + self.mlp_scale(self.mlp(self.mlp_norm(h)))

    def _attention_block(self, x: torch.Tensor, mask: Any, input_pos: torch.Tensor | None) -> torch.Tensor:
        h = self.sa_norm(x)
        return self.sa_scale(self.attn(h, h, mask=mask, input_pos=input_pos)) + x


def add_layer_parts(layer: nn.Module) -> nn.Module:
    """Let ``layer`` (a ``TransformerSelfAttentionLayer``, in place) run a sub-block alone or keep some positions.

    See :class:`LayerPartsMixin`; the layer keeps its parameters' objects and names
    (:func:`focusft.mixins.add_mixin`). Raises TypeError for any other layer type.
    """
    if not isinstance(layer, TransformerSelfAttentionLayer):
        raise TypeError(f"FocuSFT splits a TransformerSelfAttentionLayer at its FFN; got {type(layer).__name__}.")
    return add_mixin(layer, LayerPartsMixin, "WithParts")


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
    which needs every activation of the adapted layers; ``inner_checkpointing``
    (:data:`focusft.activation_memory.CheckpointMode`) says what it keeps:
    ``selective`` keeps the attention outputs and recomputes the rest.
    ``offload`` (:class:`focusft.activation_memory.ActivationOffload`), when given,
    sends what every pass saves to host memory. Every attention layer takes a
    :class:`focusft.masks.RowBlockMask` (:func:`install_row_block_attention`) besides the
    masks torchtune takes.
    """

    def __init__(
        self,
        decoder: TransformerDecoder,
        slots: FastWeightSlots,
        activation_checkpointing: bool = False,
        inner_checkpointing: CheckpointMode = "none",
        offload: ActivationOffload | None = None,
    ):
        super().__init__()
        install_row_block_attention(decoder)
        self.decoder = decoder
        self.split = slots.first_layer
        self.last = len(decoder.layers) - 1
        add_layer_parts(decoder.layers[self.split])
        add_layer_parts(decoder.layers[self.last])
        self.activation_checkpointing = activation_checkpointing
        self.inner_checkpointing = inner_checkpointing
        self.offload = offload

    def forward(self, stage: Literal["trunk", "head"], *args, **kwargs):
        if stage not in ("trunk", "head"):
            raise ValueError(f"Unknown stage {stage!r}; expected 'trunk' or 'head'.")
        run = self._trunk if stage == "trunk" else self._head
        if self.offload is None:
            return run(*args, **kwargs)
        if stage == "trunk":
            self.offload.new_step()
        fast = kwargs.get("fast_weights")
        inner_pass = fast is not None and _requires_grad(fast)
        with self.offload.inner() if inner_pass else self.offload.outer():
            return run(*args, **kwargs)

    def _trunk(
        self, tokens: torch.Tensor, *, mask: AttentionMask, input_pos: torch.Tensor, parted: bool = True
    ) -> torch.Tensor:
        """Embeddings, layers without fast weights, the first adapted layer's attention: ``[b, s] -> [b, s, d]``.

        ``parted=False`` stops before the first adapted layer (its head runs it whole): for a
        micro-batch without inner steps, where the head runs once and parting it would only
        make checkpointing keep one more ``[b, s, d]`` tensor.
        """
        h = self.decoder.tok_embeddings(tokens)
        for layer in self.decoder.layers[: self.split]:
            h = self._run_layer(layer, h, mask, input_pos, None)
        if not parted:
            return h
        return self._run_layer(self.decoder.layers[self.split], h, mask, input_pos, None, part="attention")

    def _head(
        self,
        hidden: torch.Tensor,
        *,
        mask: AttentionMask,
        input_pos: torch.Tensor,
        labels: torch.Tensor,
        fast_weights: dict[int, FastWeights] | None = None,
        parted: bool = True,
    ) -> torch.Tensor:
        """The first adapted layer's FFN (whole layer unless ``parted``), the others, each response token's loss.

        The last layer's FFN runs on the response positions only; its fast weights (in
        ``fast_weights``) must be routed for those ``N`` tokens as one row ``[1, N]``
        (:meth:`focusft.documents.Documents.at_positions`).
        """
        positions = response_positions(labels)
        h = hidden
        for index in range(self.split, len(self.decoder.layers)):
            fast = fast_weights[index] if fast_weights is not None else None
            part = "ffn" if parted and index == self.split else None
            outputs_at = positions if index == self.last else None
            h = self._run_layer(self.decoder.layers[index], h, mask, input_pos, fast, part, outputs_at)
        return response_token_losses(self.decoder, h[0], labels.flatten()[positions])

    def _run_layer(
        self,
        layer: nn.Module,
        h: torch.Tensor,
        mask: AttentionMask,
        input_pos: torch.Tensor,
        fast: FastWeights | None,
        part: LayerPart | None = None,
        outputs_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One layer, ``part`` of it or its ``outputs_at`` (:class:`LayerPartsMixin`), checkpointed as the pass asks."""
        kwargs = {"mask": mask, "input_pos": input_pos}
        kwargs |= ({"part": part} if part else {}) | ({"outputs_at": outputs_at} if outputs_at is not None else {})

        def run(x: torch.Tensor) -> torch.Tensor:
            return run_layer(layer, x, fast, **kwargs)

        if fast is not None and any(t.requires_grad for t in fast.values()):
            return run_checkpointed(run, h, self.inner_checkpointing)
        return run_checkpointed(run, h, "full" if self.activation_checkpointing else "none")


def _requires_grad(fast_weights: dict[int, FastWeights]) -> bool:
    """Whether this head pass is an inner pass (its fast weights are being differentiated)."""
    return any(t.requires_grad for ws in fast_weights.values() for t in ws.values())


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[N]`` flat (row-major) positions of ``labels [b, s]`` that carry a label."""
    return (labels.flatten() != IGNORE_INDEX).nonzero().squeeze(1)


def response_token_losses(decoder: TransformerDecoder, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fp32 next-token cross-entropy of each response position: ``hidden [N, d]``, ``targets [N]`` -> ``[N]``.

    Only those positions go through the final norm and the output projection: with a
    150K vocabulary, context positions' logits would be most of the head's cost. Their
    logits are made chunk by chunk (:func:`focusft.loss.token_cross_entropy`).
    """
    return token_cross_entropy(decoder.norm, decoder.output, hidden, targets)


def shard_split_decoder(model: SplitDecoder, *, reshard_after_forward: bool = True, cpu_offload: bool = False) -> None:
    """FSDP2: one unit per transformer layer, the wrapper as root (embeddings, norm, output)."""
    training.shard_model(
        model,
        [lambda _, module: isinstance(module, TransformerSelfAttentionLayer)],
        cpu_offload=cpu_offload,
        reshard_after_forward=reshard_after_forward,
    )
