"""Measure attention during one forward pass: a hook per attention layer, processed and dropped at once.

Each layer's hook receives that layer's attention input (under FSDP2 the layer's weights
are unsharded while it runs), recomputes its probabilities chunk by chunk and folds them
into the metrics, so memory holds one layer's q/k and one chunk of probabilities. The
forward is whatever runs the model: a plain decoder here, the recipe's sharded
``SplitDecoder`` in :mod:`focusft.analysis.probe` (every rank runs it; the hooks are local).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchtune.modules import MultiHeadAttention, TransformerDecoder
from tqdm import tqdm

from focusft.analysis.metrics import HEATMAP_SIZE, AttentionMetrics, MetricsAccumulator
from focusft.analysis.probabilities import attention_probabilities, default_query_chunk, queries_and_keys
from focusft.analysis.sample import AttentionSample
from focusft.masks import AttentionMask, MaskKind, MaskMode, build_mask, focus_mask_mod

# forward(tokens [1, s], mask, input_pos [1, s]) runs every layer of the model once.
Forward = Callable[[torch.Tensor, AttentionMask, torch.Tensor], object]


def measure_attention(
    layers: nn.ModuleList,
    forward: Forward,
    sample: AttentionSample,
    mode: MaskMode,
    *,
    device: torch.device | str,
    mask_kind: MaskKind = "dense",
    heatmap_layer: int | None = None,
    with_heatmap: bool = True,
    heatmap_size: int = HEATMAP_SIZE,
    query_chunk: int | None = None,
    progress: bool = False,
) -> AttentionMetrics:
    """Attention metrics of ``sample`` under ``mode`` for the model whose transformer ``layers`` ``forward`` runs.

    ``heatmap_layer`` defaults to the middle layer ``L // 2`` (the paper's layer 14 of 28); the
    heatmap costs a pass over all queries of that layer, the other metrics need the responses' only.
    """
    num_layers = len(layers)
    layout = sample.layout().to(device)
    mask_mod = focus_mask_mod(layout, mode)
    if not with_heatmap:
        heatmap_layer = None
    elif heatmap_layer is None:
        heatmap_layer = num_layers // 2
    accumulator = MetricsAccumulator(
        num_layers, sample.response.to(device), sample.segments.to(device), heatmap_layer, heatmap_size
    )
    all_queries = torch.arange(sample.seq_len, device=device)
    response_queries = all_queries[sample.response.to(device)]
    bar = tqdm(total=num_layers, desc="attention layers", disable=not progress, leave=False)
    measured: list[int] = []

    def hook_for(index: int, attn: MultiHeadAttention):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            q, k = queries_and_keys(attn, args[0], kwargs.get("input_pos"))
            queries = all_queries if index == heatmap_layer else response_queries
            chunk = query_chunk or default_query_chunk(attn.num_heads, sample.seq_len)
            for rows, probs in attention_probabilities(q, k, mask_mod, queries, chunk):
                accumulator.add(index, rows, probs)
            measured.append(index)
            bar.update(1)

        return hook

    handles = [
        layer.attn.register_forward_pre_hook(hook_for(index, layer.attn), with_kwargs=True)
        for index, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # hooks must not be traced
            tokens, input_pos = sample.tokens[None].to(device), sample.input_pos[None].to(device)
            forward(tokens, build_mask(layout, mode, mask_kind), input_pos)
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
    if sorted(measured) != list(range(num_layers)):
        raise RuntimeError(f"The forward ran attention layers {sorted(measured)}, not 0..{num_layers - 1} once each.")
    return accumulator.result()


def decoder_forward(decoder: TransformerDecoder, offload_to: torch.device | None = None) -> Forward:
    """Embeddings and transformer layers of ``decoder`` (no final norm or output projection, which are not needed).

    With ``offload_to`` the decoder stays where it is (e.g. on the CPU) and each layer is moved
    to ``offload_to`` only while it runs: any model size fits on one GPU, one layer at a time.
    """

    def forward(tokens: torch.Tensor, mask: AttentionMask, input_pos: torch.Tensor) -> torch.Tensor:
        embed_device = decoder.tok_embeddings.weight.device
        h = decoder.tok_embeddings(tokens.to(embed_device)).to(tokens.device)
        for layer in decoder.layers:
            if offload_to is not None:
                home = next(layer.parameters()).device
                layer.to(offload_to)
                h = layer(h, mask=mask, input_pos=input_pos)
                layer.to(home)
            else:
                h = layer(h, mask=mask, input_pos=input_pos)
        return h

    return forward
