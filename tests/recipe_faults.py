"""Faults injected into recipe runs: a model whose outer loss turns NaN at chosen steps."""

from __future__ import annotations

import os

import torch

from focusft.tiny import tiny_qwen2_5


def tiny_qwen2_5_with_nan(nan_at: list[str]):
    """The tiny model; its final norm outputs NaN on the given ``"rank:call"`` (0-based calls of that rank).

    With bilevel off and one micro-batch per step, call ``i`` belongs to optimizer step ``i + 1``.
    """
    model = tiny_qwen2_5()
    rank = os.environ.get("RANK", "0")
    poisoned = {int(call) for entry in nan_at for r, _, call in [entry.partition(":")] if r == rank}
    calls = iter(range(1 << 62))

    def poison(module, args, output):
        return output * torch.nan if next(calls) in poisoned else output

    model.norm.register_forward_hook(poison)
    return model
