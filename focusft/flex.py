"""FlexAttention compiled once for every sequence length.

torchtune compiles the FlexAttention kernel it calls for a ``BlockMask`` with
``dynamic=False``: every new sequence length compiles it again, and after Dynamo's
recompile limit (8) new lengths run it uncompiled, which materialises the scores.
Unpacked data has a new length almost every step, so the recipe replaces that
compiled function with one whose sequence length is dynamic.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import flex_attention


def compile_flex_attention_for_all_lengths() -> bool:
    """Make torchtune's BlockMask attention path use a dynamic-shape compiled FlexAttention.

    Returns False (and changes nothing) where torchtune does not use FlexAttention
    (no CUDA GPU of compute capability 7.5+).
    """
    from torchtune.modules import attention_utils

    if not hasattr(attention_utils, "flex_attention_compiled"):
        return False
    attention_utils.flex_attention_compiled = torch.compile(flex_attention, dynamic=True)
    return True
