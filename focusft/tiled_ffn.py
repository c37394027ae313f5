"""A sequence-tiled FFN: the ``[s, intermediate]`` activations exist for one tile at a time.

docs/DESIGN.md section 6b (the "tiled MLP" of Arctic Long Sequence Training). The
FFN of a Qwen2.5 layer widens each token 5.3× (7B: 3584 -> 18944) and keeps three such
tensors for its backward pass, the largest activations of a long sequence. Here the
forward pass runs the FFN tile by tile (``ffn_tile_tokens`` positions of every row) and
keeps only its input; the backward pass recomputes one tile at a time and sums the
tiles' gradients. The FFN is position-wise, so the result is the untiled one.

Fast weights ride along: whatever the projections' fast-weight slots hold at call
time (filled by ``functional_call``) is passed into the tiles, with the per-document
chunk routing of :class:`focusft.documents.Documents` cut down to each tile's tokens,
and the gradients of the fast weights come back like those of θ.
"""

from __future__ import annotations

import torch
from torch.func import functional_call
from torchtune.modules import FeedForward, TransformerDecoder

CHUNK_TOKENS_SLOT = "fast_chunk_tokens"
CHUNK_DOCUMENT_SLOT = "fast_chunk_document"


class TiledFeedForward(FeedForward):
    """torchtune's ``FeedForward`` computed in tiles of ``tile_tokens`` positions (same parameter names)."""

    def __init__(self, ffn: FeedForward, tile_tokens: int):
        super().__init__(gate_proj=ffn.w1, down_proj=ffn.w2, up_proj=ffn.w3, activation=ffn.activation)
        self.tile_tokens = tile_tokens

    def forward(self, x: torch.Tensor, tiled: bool = True) -> torch.Tensor:
        """``x [b, s, d] -> [b, s, d]``; one plain call when ``s`` fits in one tile."""
        if not tiled or x.dim() != 3 or x.shape[1] <= self.tile_tokens:
            return super().forward(x)
        named = [*self.named_parameters(remove_duplicate=False), *self.named_buffers(remove_duplicate=False)]
        names = tuple(name for name, _ in named)
        return _TiledFunction.apply(self, names, x, *(t for _, t in named))


def _tiles(length: int, tile: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + tile, length)) for lo in range(0, length, tile)]


def _tile_tensors(
    names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], rows: int, length: int, lo: int, hi: int
) -> dict[str, torch.Tensor]:
    """The FFN's tensors for positions ``lo:hi`` of every row: chunk routing made local to the tile.

    Chunk positions are flat over ``[rows, length]``; in the tile they become flat over
    ``[rows, hi - lo]``, positions outside it become padding, and chunks without a
    token in the tile are dropped (one host sync per tile).
    """
    values = dict(zip(names, tensors))
    local_routing: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in names:
        if not name.endswith(CHUNK_TOKENS_SLOT):
            continue
        prefix = name.removesuffix(CHUNK_TOKENS_SLOT)
        positions, documents = values[name], values[prefix + CHUNK_DOCUMENT_SLOT]
        key = id(positions)
        if key not in local_routing:
            width = hi - lo
            column = positions % length
            inside = (positions < rows * length) & (column >= lo) & (column < hi)
            local = torch.where(inside, (positions // length) * width + column - lo, rows * width)
            keep = inside.any(dim=1).nonzero().squeeze(1)
            local_routing[key] = (local[keep], documents[keep])
        values[name], values[prefix + CHUNK_DOCUMENT_SLOT] = local_routing[key]
    return values


def _run_tile(module: TiledFeedForward, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return functional_call(module, tensors, (x,), {"tiled": False})


class _TiledFunction(torch.autograd.Function):
    """Forward: tiles without a graph, keeping only the inputs. Backward: each tile recomputed and differentiated."""

    @staticmethod
    def forward(ctx, module: TiledFeedForward, names: tuple[str, ...], x: torch.Tensor, *tensors: torch.Tensor):
        ctx.module, ctx.names = module, names
        ctx.save_for_backward(x, *tensors)
        rows, length = x.shape[:2]
        outputs = [
            functional_call(
                module, _tile_tensors(names, tensors, rows, length, lo, hi), (x[:, lo:hi],), {"tiled": False}
            )
            for lo, hi in _tiles(length, module.tile_tokens)
        ]
        return torch.cat(outputs, dim=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, *tensors = ctx.saved_tensors
        module, names = ctx.module, ctx.names
        needs_x, needs = ctx.needs_input_grad[2], ctx.needs_input_grad[3:]
        rows, length = x.shape[:2]
        grad_x = torch.empty_like(x) if needs_x else None
        grads: list[torch.Tensor | None] = [None] * len(tensors)
        for lo, hi in _tiles(length, module.tile_tokens):
            with torch.enable_grad():
                x_tile = x[:, lo:hi].detach().requires_grad_(needs_x)
                leaves = tuple(t.detach().requires_grad_(n) for t, n in zip(tensors, needs))
                out = _run_tile(module, _tile_tensors(names, leaves, rows, length, lo, hi), x_tile)
                wanted = [x_tile] * needs_x + [t for t, n in zip(leaves, needs) if n]
                got = iter(torch.autograd.grad(out, wanted, grad_out[:, lo:hi], allow_unused=True))
            if needs_x:
                grad_x[:, lo:hi] = next(got)
            for i, n in enumerate(needs):
                if n:
                    g = next(got)
                    if g is not None:
                        grads[i] = g if grads[i] is None else grads[i].add_(g)
        return None, None, grad_x, *grads


def apply_tiled_ffn(decoder: TransformerDecoder, tile_tokens: int | None) -> None:
    """Make every layer's FFN a :class:`TiledFeedForward` (``None``: leave the model as it is)."""
    if tile_tokens is None:
        return
    if isinstance(tile_tokens, bool) or not isinstance(tile_tokens, int) or tile_tokens < 1:
        raise ValueError(f"ffn_tile_tokens must be null or an integer >= 1, got {tile_tokens!r}.")
    for layer in decoder.layers:
        if isinstance(layer.mlp, TiledFeedForward):
            layer.mlp.tile_tokens = tile_tokens
        elif isinstance(layer.mlp, FeedForward):
            layer.mlp = TiledFeedForward(layer.mlp, tile_tokens)
        else:
            raise ValueError(f"ffn_tile_tokens needs torchtune FeedForward layers, found {type(layer.mlp).__name__}.")
