"""CPU attention under a :class:`~focusft.masks.RowBlockMask`: one block of query rows at a time, no ``[b, s, s]`` mask.

docs/DESIGN.md sections 2 and 6b. On a CPU FlexAttention has no backward pass, and SDPA
with a dense additive mask keeps one ``[b, s, s]`` tensor for the whole step (64 MiB at
4K tokens, fp32). Here the mask is made per block of query rows ``[i, j)`` from the same
``mask_mod`` and handed, with those rows' queries and every key, to the CPU flash kernel
SDPA itself would run (``_scaled_dot_product_flash_attention_for_cpu``): each query row's
softmax sees the same scores, so the result is SDPA's with the dense mask. The backward
pass makes each block's mask again and calls the kernel's own backward per block, summing
the key and value gradients over blocks.

:func:`install_row_block_attention` puts :class:`RowBlockAttentionCall` in every
``MultiHeadAttention``'s attention call: it handles a ``RowBlockMask`` and hands any other
mask (tensor, BlockMask, ``None``) to the call it wraps, unchanged. Under sequence
parallelism it sits inside Ulysses' all-to-alls (:class:`focusft.sequence_parallel.UlyssesAttention`),
where the whole row's queries, keys and values are seen.

Selective activation checkpointing (:mod:`focusft.activation_memory`) sees the kernel
calls inside :class:`RowBlockAttention`'s forward: it keeps each block's (out,
log-sum-exp) and, when the forward is replayed, returns them instead of running the
kernel again (tests/test_row_block_attention.py counts the calls).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchtune.modules import MultiHeadAttention

from focusft.masks import AttentionMask, RowBlockMask

_FLASH = "_scaled_dot_product_flash_attention_for_cpu"
_FLASH_BACKWARD = "_scaled_dot_product_flash_attention_for_cpu_backward"


def unavailable_reason() -> str | None:
    """Why this torch cannot run row-block attention (its CPU flash-attention operators are missing), or None."""
    missing = [name for name in (_FLASH, _FLASH_BACKWARD) if not hasattr(torch.ops.aten, name)]
    if missing:
        return f"torch {torch.__version__} has no aten.{' or aten.'.join(missing)}"
    return None


class RowBlockAttention(torch.autograd.Function):
    """``softmax(q kᵀ · scale + mask) v`` with ``mask`` a RowBlockMask, block by block of query rows.

    ``q, k, v``: ``[b, h, s, d]`` (key/value heads already repeated to ``h``, as torchtune
    does before its attention call); ``scale`` None is SDPA's ``1 / sqrt(d)``. Saves q, k,
    v, the output and the log-sum-exp ``[b, h, s]`` (fp32 for fp32 inputs), never a mask.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: RowBlockMask, scale: float | None):
        flash = getattr(torch.ops.aten, _FLASH)
        blocks = mask.blocks()
        outs, lses = [], []
        for queries, keys in blocks:
            block_mask = mask.additive(queries, keys, q.dtype)
            out, lse = flash(
                q[:, :, queries], k[:, :, keys], v[:, :, keys], 0.0, False, attn_mask=block_mask, scale=scale
            )
            outs.append(out.transpose(1, 2))  # the kernel's layout, [b, rows, h, d] in memory
            lses.append(lse)
        out = torch.cat(outs, dim=1).transpose(1, 2)  # [b, h, s, d], stored as [b, s, h, d] like SDPA's output
        lse = torch.cat(lses, dim=2)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.blocks, ctx.scale = mask, blocks, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        mask: RowBlockMask = ctx.mask
        flash_backward = getattr(torch.ops.aten, _FLASH_BACKWARD)
        grad_q, grad_k, grad_v = [], torch.zeros_like(k), torch.zeros_like(v)
        for queries, keys in ctx.blocks:
            dq, dk, dv = flash_backward(
                grad_out[:, :, queries],
                q[:, :, queries],
                k[:, :, keys],
                v[:, :, keys],
                out[:, :, queries],
                lse[:, :, queries],
                0.0,
                False,
                attn_mask=mask.additive(queries, keys, q.dtype),
                scale=ctx.scale,
            )
            grad_q.append(dq)
            grad_k[:, :, keys] += dk
            grad_v[:, :, keys] += dv
        return torch.cat(grad_q, dim=2), grad_k, grad_v, None, None


@torch.compiler.disable  # the mask object and the per-block loop stay eager under a compiled layer
def row_block_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: RowBlockMask, scale: float | None = None
) -> torch.Tensor:
    """SDPA's result with ``mask``'s dense additive mask, made one block of query rows at a time (CPU tensors)."""
    if reason := unavailable_reason():
        raise RuntimeError(f"FocuSFT mask error: the rows mask needs the CPU flash-attention kernel; {reason}.")
    if q.device.type != "cpu":
        raise RuntimeError(f"FocuSFT mask error: the rows mask runs on CPU tensors; these are on {q.device}.")
    if q.shape[2] != mask.shape[1] or k.shape[2] != mask.shape[1]:
        raise RuntimeError(
            f"FocuSFT mask error: attention over {q.shape[2]} queries and {k.shape[2]} keys, "
            f"but the rows mask is for {mask.shape[1]} positions."
        )
    return RowBlockAttention.apply(q, k, v, mask, scale)


class RowBlockAttentionCall:
    """A ``MultiHeadAttention._attention_call`` that runs :func:`row_block_attention` for a RowBlockMask.

    Every other mask goes to ``attend`` (the call it replaces) unchanged.
    """

    def __init__(self, attend: Callable[..., torch.Tensor]) -> None:
        self.attend = attend

    def __call__(self, q, k, v, mask: AttentionMask, dropout_p: float, is_causal: bool) -> torch.Tensor:
        if not isinstance(mask, RowBlockMask):
            return self.attend(q, k, v, mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        if dropout_p > 0.0:
            raise ValueError(f"FocuSFT mask error: the rows mask has no attention dropout (got {dropout_p}).")
        return row_block_attention(q, k, v, mask)


def install_row_block_attention(model: nn.Module) -> None:
    """Let every ``MultiHeadAttention`` of ``model`` take a RowBlockMask (idempotent).

    Wrappers that hand whole rows on through an ``attend`` attribute (Ulysses' all-to-alls)
    stay outside: the row-block call goes innermost, where the whole row is seen.
    """
    for module in model.modules():
        if not isinstance(module, MultiHeadAttention):
            continue
        owner, name = module, "_attention_call"
        call = getattr(owner, name)
        while hasattr(call, "attend") and not isinstance(call, RowBlockAttentionCall):
            owner, name, call = call, "attend", call.attend
        if not isinstance(call, RowBlockAttentionCall):
            setattr(owner, name, RowBlockAttentionCall(call))
