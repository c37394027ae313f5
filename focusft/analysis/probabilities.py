"""Softmax attention probabilities of one torchtune attention layer, a chunk of queries at a time.

Fused attention kernels (SDPA, FlexAttention) never materialise the probabilities, so
they are recomputed from the layer's input exactly as torchtune's ``MultiHeadAttention``
forms q and k: projections, RoPE at the sample's positions, q/k norms, the GQA head
repeat, and the default ``1/sqrt(head_dim)`` scale. Only ``[heads, chunk, s]`` fp32
probabilities exist at any time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torchtune.modules import MultiHeadAttention

from focusft.masks import MaskMod

PROBABILITY_BYTES_PER_CHUNK = 64 * 2**20  # fp32 [heads, chunk, s] held at once


def queries_and_keys(
    attn: MultiHeadAttention, x: torch.Tensor, input_pos: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[heads, s, head_dim]`` queries and keys (keys repeated per GQA group) of one sample ``x: [1, s, d]``."""
    if x.shape[0] != 1:
        raise ValueError(f"Attention analysis takes one sample at a time, got a batch of {x.shape[0]}.")
    b, s, _ = x.shape
    q = attn.q_proj(x).view(b, s, attn.num_heads, attn.head_dim)
    k = attn.k_proj(x).view(b, s, attn.num_kv_heads, attn.head_dim)
    if attn.pos_embeddings is not None:
        q = attn.pos_embeddings(q, input_pos=input_pos)
        k = attn.pos_embeddings(k, input_pos=input_pos)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    if attn.q_norm is not None:
        q = attn.q_norm(q)
    if attn.k_norm is not None:
        k = attn.k_norm(k)
    k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)  # head h reads kv head h // group
    return q[0], k[0]


def default_query_chunk(num_heads: int, seq_len: int) -> int:
    """Queries per chunk so that one chunk's probabilities take about ``PROBABILITY_BYTES_PER_CHUNK``."""
    return max(1, PROBABILITY_BYTES_PER_CHUNK // (4 * num_heads * seq_len))


def attention_probabilities(
    q: torch.Tensor, k: torch.Tensor, mask_mod: MaskMod, queries: torch.Tensor, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(query positions [c], probabilities [heads, c, s])`` for successive chunks of ``queries``.

    ``mask_mod(b, h, q, k)`` is the mask of :mod:`focusft.masks` for a one-row layout; it is
    evaluated on the chunk's ``[c, s]`` index grid only. Scores and softmax are in fp32.
    """
    seq_len = k.shape[1]
    keys = torch.arange(seq_len, device=k.device)
    zero = torch.zeros((), dtype=torch.long, device=k.device)
    k = k.float()
    scale = q.shape[-1] ** -0.5
    for rows in queries.split(chunk):
        scores = torch.einsum("hqd,hkd->hqk", q[:, rows].float(), k).mul_(scale)
        allowed = mask_mod(zero, zero, rows[:, None], keys[None, :])
        scores.masked_fill_(~allowed, float("-inf"))
        yield rows, scores.softmax(dim=-1)
