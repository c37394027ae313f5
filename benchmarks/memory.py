"""Peak memory of a piece of training, on CUDA (allocator statistics) or CPU (live tensor storages).

The CPU allocator keeps no statistics and RSS moves in large, lazily returned pages, so
on CPU :class:`TensorMemoryTracker` counts the bytes of every tensor storage created
while it is active and released when Python frees it: the same quantity as CUDA's
``max_memory_allocated`` minus what existed before, without allocator rounding.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorMemoryTracker(TorchDispatchMode):
    """``with TensorMemoryTracker() as m: ...`` then ``m.peak``: the most bytes alive at once.

    Only storages made by operators inside the block count (parameters that existed
    before do not, nor views of them), so ``peak`` is the block's memory growth. Works
    on fake tensors too (benchmarks/memory_estimate.py): storages are told apart by
    their ``StorageImpl``, not by their data pointer. Python-level dispatch on
    every operator makes the block slower: measure memory and time in separate runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # A view of an input (a parameter's transpose) shares its storage: it is not new memory
        # unless that storage was made inside the block (then it is tracked already).
        inputs = {
            t.untyped_storage()._cdata
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage._cdata not in inputs:
                    self._track(storage)
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._tracked:
            return
        nbytes = storage.nbytes()
        self._tracked.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes


def peak_memory_growth(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes by which ``fn()`` raised the peak of tensor memory above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with TensorMemoryTracker() as tracker:
        fn()
    return tracker.peak
