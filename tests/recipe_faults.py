"""Faults injected into recipe runs: a model whose outer loss turns NaN at chosen steps, full disks, a slow model."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import torch
from torchtune.training import FullModelHFCheckpointer
from torchtune.training.metric_logging import DiskLogger

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


class FullDiskCheckpointer(FullModelHFCheckpointer):
    """torchtune's HF checkpointer on a disk that fills up halfway through writing the weights."""

    def save_checkpoint(self, state_dict, epoch, **kwargs):
        partial = Path(self._output_dir) / f"epoch_{epoch}"
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device", str(partial))


def slow_tiny_qwen2_5(seconds: float):
    """The tiny model, sleeping ``seconds`` in every forward: a run long enough to be signalled mid-way."""
    model = tiny_qwen2_5()
    model.norm.register_forward_hook(lambda module, args, output: time.sleep(seconds))
    return model


class FullDiskLogger(DiskLogger):
    """torchtune's DiskLogger on a disk that fills up after ``full_after`` logged steps."""

    def __init__(self, log_dir: str, full_after: int, **kwargs):
        super().__init__(log_dir, **kwargs)
        self.full_after = full_after
        self.logged = 0

    def log_dict(self, payload, step):
        if self.logged == self.full_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.logged += 1
        super().log_dict(payload, step)
