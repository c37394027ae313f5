"""The FocuSFT attention mask: bidirectional inside context turns, causal elsewhere.

One ``mask_mod`` defines the mask (docs/DESIGN.md section 2). It is materialised as a
FlexAttention ``BlockMask`` (GPU: no S x S tensor), as a dense ``[b, s, s]`` tensor, bool
or additive (CPU inference and analysis), or as a :class:`RowBlockMask` (CPU training,
where FlexAttention has no backward): the per-token layout, materialised one block of
query rows at a time by :mod:`focusft.row_block_attention`. torchtune's
``TransformerDecoder.forward(mask=...)`` accepts tensors, BlockMasks and ``None`` (the
attention kernel's own causal mask, which :func:`build_mask` returns where it is the
same mask); a RowBlockMask needs the attention call of :mod:`focusft.row_block_attention`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Literal, get_args

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

MaskMode = Literal["bidir_context", "causal"]
MASK_MODES: tuple[str, ...] = get_args(MaskMode)
MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MaskKind = Literal["dense", "block", "rows"]
MASK_KINDS: tuple[str, ...] = get_args(MaskKind)
# Sequence lengths are padded to a multiple of this for the BlockMask (its block size), so
# that FlexAttention sees whole blocks and fewer distinct shapes.
LENGTH_MULTIPLE = 128


def check_mask_mode(mode: str) -> None:
    if mode not in MASK_MODES:
        raise ValueError(f"Unknown attention mask mode {mode!r}; expected one of {MASK_MODES}.")


@dataclass(frozen=True)
class TokenLayout:
    """Per-token structure of a batch, the only input the mask needs.

    Attributes:
        context: ``[b, s]`` bool, True where the token is not trained on (system,
            user, tool output, chat-template tokens).
        doc: ``[b, s]`` int, document id of each token in a packed row.
        valid: ``[b, s]`` bool, False on padding.
    """

    context: torch.Tensor
    doc: torch.Tensor
    valid: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {name: tuple(getattr(self, name).shape) for name in ("context", "doc", "valid")}
        if len(set(shapes.values())) != 1 or len(shapes["context"]) != 2:
            raise ValueError(f"TokenLayout needs context, doc and valid of one shape [batch, seq_len]; got {shapes}.")
        for name in ("context", "valid"):
            if getattr(self, name).dtype != torch.bool:
                raise ValueError(f"TokenLayout.{name} must be a bool tensor, got {getattr(self, name).dtype}.")
        if self.doc.dtype.is_floating_point or self.doc.dtype == torch.bool:
            raise ValueError(f"TokenLayout.doc must be an integer tensor, got {self.doc.dtype}.")

    @classmethod
    def single_document(cls, context: torch.Tensor) -> TokenLayout:
        """Layout of unpacked, unpadded rows: one document per row."""
        return cls(context=context, doc=torch.zeros_like(context, dtype=torch.long), valid=torch.ones_like(context))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.context.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> TokenLayout:
        return TokenLayout(self.context.to(device), self.doc.to(device), self.valid.to(device))

    def turn_ids(self) -> torch.Tensor:
        """``[b, s]`` id of each token's turn: a new turn starts wherever ``context`` or ``doc`` changes."""
        change = (self.context[:, 1:] != self.context[:, :-1]) | (self.doc[:, 1:] != self.doc[:, :-1])
        starts = torch.cat([torch.zeros_like(change[:, :1]), change], dim=1)
        return starts.long().cumsum(dim=1)


def focus_mask_mod(layout: TokenLayout, mode: MaskMode) -> MaskMod:
    """``mask_mod(b, h, q, k)`` of docs/DESIGN.md section 2 for ``layout``."""
    check_mask_mode(mode)
    context, doc, valid = layout.context, layout.doc, layout.valid
    turn = layout.turn_ids()
    bidirectional = mode == "bidir_context"

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        visible = k <= q
        if bidirectional:
            visible = visible | (context[b, q] & context[b, k] & (turn[b, q] == turn[b, k]))
        same_doc = valid[b, q] & valid[b, k] & (doc[b, q] == doc[b, k])
        return (q == k) | (same_doc & visible)

    return mask_mod


def mask_rows(mask_mod: MaskMod, batch: int, queries: slice, keys: slice, device: torch.device | str) -> torch.Tensor:
    """Bool ``[batch, len(queries), len(keys)]``: the mask's query rows ``queries`` against keys ``keys``.

    The ``mask_mod`` is evaluated once on broadcast index grids: the same function the
    BlockMask uses, ~25x faster than ``create_mask``'s vmap over every (q, k) pair.
    """
    b = torch.arange(batch, device=device)[:, None, None]
    q = torch.arange(queries.start, queries.stop, device=device)[None, :, None]
    k = torch.arange(keys.start, keys.stop, device=device)[None, None, :]
    return mask_mod(b, torch.zeros((), dtype=torch.long, device=device), q, k)


def dense_mask(layout: TokenLayout, mode: MaskMode) -> torch.Tensor:
    """Bool ``[b, s, s]`` mask (True = may attend), for SDPA."""
    b, s = layout.shape
    return mask_rows(focus_mask_mod(layout, mode), b, slice(0, s), slice(0, s), layout.context.device)


# Query rows per block of a RowBlockMask: the fastest on the CPU preset's attention at 4K
# tokens (fp32, one thread; 256-1024 within 5%, 128 and 2048 slower): benchmarks/row_block_size.py,
# BENCHMARKS.md (issue 17).
ROW_BLOCK = 512


@dataclass(frozen=True, eq=False)
class RowBlockMask:
    """The mask of ``layout`` under ``mode``, kept as its ``O(b·s)`` layout and made ``block`` query rows at a time.

    :meth:`blocks` cuts the queries into blocks and gives each the range of keys that
    holds every key its rows may see (below); :meth:`additive` makes that block's additive
    mask, ``[b, 1, rows, keys]`` (SDPA's shape, broadcast over heads), from the same
    ``mask_mod`` as the other representations. The attention of
    :mod:`focusft.row_block_attention` calls it in its forward and again in its backward
    pass, so no ``[b, s, s]`` tensor is made or kept.

    Key range (docs/DESIGN.md section 2): query ``q`` may see only itself, keys of its
    document at or before it, and, in the ``bidir_context`` mode when ``q`` is a context
    token, keys of its turn. So its keys lie in ``[first position of q's document id,
    max(q, last position of q's turn) + 1)``; keys outside a block's range are masked for
    every row of the block, and leaving them out changes only the order of fp32 sums.
    ``key_ranges=False`` gives every block all keys (fake tensors, whose values are unknown).
    """

    layout: TokenLayout
    mode: MaskMode
    block: int = ROW_BLOCK
    key_ranges: bool = True
    mask_mod: MaskMod = field(init=False, repr=False)
    _blocks: list[tuple[slice, slice]] | None = field(init=False, repr=False, default=None)  # made on first use

    def __post_init__(self) -> None:
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"RowBlockMask.block must be a positive number of query rows, got {self.block!r}.")
        object.__setattr__(self, "mask_mod", focus_mask_mod(self.layout, self.mode))

    def _block_ranges(self) -> list[tuple[slice, slice]]:
        """Each block's queries and key range, once per mask (one host sync per block), not per attention call."""
        s = self.shape[1]
        starts = range(0, s, self.block)
        if not self.key_ranges:
            return [(slice(start, min(start + self.block, s)), slice(0, s)) for start in starts]
        layout = self.layout
        b, s = layout.shape
        position = torch.arange(s, device=layout.doc.device).expand(b, s)
        ids, doc_index = torch.unique(layout.doc, return_inverse=True)  # document ids made 0 .. len(ids) - 1
        first = torch.full((b, len(ids)), s, dtype=torch.long, device=position.device)
        first = first.scatter_reduce(1, doc_index, position, "amin")  # first position of each id, per row
        key_start = first.gather(1, doc_index)
        key_stop = position + 1
        if self.mode == "bidir_context":
            turn = layout.turn_ids()  # [0, s): a row's turns are contiguous runs
            last = torch.zeros((b, s), dtype=torch.long, device=position.device)
            turn_end = last.scatter_reduce(1, turn, position, "amax").gather(1, turn) + 1
            key_stop = torch.where(layout.context, torch.maximum(key_stop, turn_end), key_stop)
        result = []
        for start in starts:
            queries = slice(start, min(start + self.block, s))
            keys = slice(int(key_start[:, queries].min()), int(key_stop[:, queries].max()))
            result.append((queries, keys))
        return result

    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, seq_len)``."""
        return self.layout.shape

    def blocks(self) -> list[tuple[slice, slice]]:
        """``(queries, keys)`` of each block of query rows (the last may be shorter), made on the first call."""
        if self._blocks is None:
            object.__setattr__(self, "_blocks", self._block_ranges())
        return self._blocks

    def additive(self, queries: slice, keys: slice, dtype: torch.dtype) -> torch.Tensor:
        """Additive ``[b, 1, len(queries), len(keys)]`` mask of a block in ``dtype`` (:func:`additive_mask`)."""
        allowed = mask_rows(self.mask_mod, self.shape[0], queries, keys, self.layout.context.device)
        return additive_mask(allowed, dtype)[:, None]


AttentionMask = torch.Tensor | BlockMask | RowBlockMask | None


@cache
def _compiled_create_block_mask() -> Callable[..., BlockMask]:
    return torch.compile(create_block_mask)


def block_mask(layout: TokenLayout, mode: MaskMode, block_size: int = 128, compile: bool | None = None) -> BlockMask:
    """FlexAttention ``BlockMask`` of the same ``mask_mod``.

    Compiled (the default on GPUs), ``create_block_mask`` evaluates the ``mask_mod``
    block by block; eagerly it first builds the full ``[b, 1, s, s]`` bool mask (4 GB at
    64K tokens). Dynamo compiles once more after the first new sequence length and
    then treats lengths as dynamic.
    """
    b, s = layout.shape
    device = layout.context.device
    if compile is None:
        compile = device.type == "cuda"
    create = _compiled_create_block_mask() if compile else create_block_mask
    return create(focus_mask_mod(layout, mode), b, None, s, s, device=device, BLOCK_SIZE=block_size)


def is_plain_causal(layout: TokenLayout) -> bool:
    """Whether the causal mode's mask equals the standard causal mask on every valid query.

    True when each row is one document followed only by padding: a valid query then
    sees exactly the keys at or before it, and padding queries are never trained on.
    One host sync.
    """
    valid, doc = layout.valid, layout.doc
    prefix = (valid[:, 1:] <= valid[:, :-1]).all()
    one_doc = ((doc == doc[:, :1]) | ~valid).all()
    return bool(prefix & one_doc)


def document_positions(doc: torch.Tensor) -> torch.Tensor:
    """RoPE positions that restart at 0 at each packed document's first token."""
    s = doc.shape[1]
    index = torch.arange(s, device=doc.device).expand_as(doc)
    starts = torch.ones_like(doc, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - start_index


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``0`` where ``mask`` allows attention, ``-inf`` elsewhere, in the activations' dtype.

    SDPA converts a bool mask to this form on every call and keeps each copy for the
    backward pass (one ``[b, s, s]`` tensor per layer and pass); given it once, every
    layer shares it. The softmax is the same: no row is empty (``q == k`` is allowed).
    """
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.full((), float("-inf"), dtype=dtype, device=mask.device))


def build_mask(layout: TokenLayout, mode: MaskMode, kind: MaskKind, dtype: torch.dtype | None = None) -> AttentionMask:
    """The mask for one micro-batch, in the representation the attention kernel needs.

    ``None`` for the causal mode on rows of one unpacked document each: torchtune then
    calls SDPA with ``is_causal=True``, whose kernels skip the masked half instead of
    computing all ``s × s`` scores. Losses are unchanged. A dense mask is additive in
    ``dtype`` when that is given (see :func:`additive_mask`), else bool. A ``rows``
    mask (:class:`RowBlockMask`) takes the activations' dtype when it is used.
    """
    check_mask_mode(mode)
    if mode == "causal" and is_plain_causal(layout):
        return None
    if kind == "dense":
        mask = dense_mask(layout, mode)
        return additive_mask(mask, dtype) if dtype is not None else mask
    if kind == "block":
        return block_mask(layout, mode)
    if kind == "rows":
        return RowBlockMask(layout, mode)
    raise ValueError(f"Unknown mask kind {kind!r}; expected one of {MASK_KINDS}.")
