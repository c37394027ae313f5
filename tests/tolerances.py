"""Tolerances that follow the arithmetic of what a test compares, not a guess.

Recursive summation of n fp32 terms errs by at most (n - 1)·u·Σ|x| with u = eps / 2
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §4.2); blocked or
pairwise sums (what PyTorch's kernels do, in an order that depends on the thread count)
err less. ``n · eps`` also leaves room for rounding each term before it is summed.
"""

from __future__ import annotations

import torch

from focusft.tiny import TinyQwenConfig

FP32_EPS = torch.finfo(torch.float32).eps


def fp32_sum_error(terms: int, magnitude: float = 1.0) -> float:
    """Bound on the error of fp32 arithmetic that adds ``terms`` values whose magnitudes sum to ``magnitude``."""
    return terms * FP32_EPS * magnitude


def attention_share_error(seq_len: int, heads: int = TinyQwenConfig.num_heads) -> float:
    """Bound on the error of attention shares that add up to 1 (focusft.analysis).

    Each probability comes from an fp32 softmax over at most ``seq_len`` keys, is
    averaged over ``heads`` heads in fp32, then summed over at most ``seq_len``
    response queries in fp32 before the float64 accumulation.
    """
    return fp32_sum_error(2 * seq_len + heads)
