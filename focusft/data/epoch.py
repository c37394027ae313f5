"""Every sample trained once per epoch, on any number of processes, batch size and accumulation.

Three pieces make an epoch cover the dataset exactly:

- The samplers give every process as many indices (so that every process runs the same
  forward and backward passes: FSDP's collectives need all of them). Where the dataset does
  not divide evenly, a padded place holds ``len(dataset) + i``: a copy of sample ``i``
  that trains nothing, instead of a second copy of sample ``i`` that would count twice.
- :class:`ZeroWeightPadding` serves those places: the sample's tokens with every label
  ignored, so it adds no loss, no gradient, no response token and no document.
- :class:`EpochSteps`: the data loader keeps its last, smaller batch, and the epoch ends
  with a shorter optimizer step when the micro-batches do not fill the last one, as
  transformers' ``Trainer`` does. Every step is normalised by its own tokens (or
  documents), so a shorter step is a step over fewer samples, not a smaller one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from focusft.split_decoder import IGNORE_INDEX


class ZeroWeightPadding(Dataset):
    """``dataset``, and at index ``len(dataset) + i`` a copy of item ``i`` whose labels are all ignored.

    ``len()`` is the number of real items, and the wrapped dataset's own attributes
    (``lengths``, ``stats``) stay reachable.
    """

    def __init__(self, dataset: Sequence[dict[str, Any]], ignore_idx: int = IGNORE_INDEX) -> None:
        self.dataset, self.ignore_idx = dataset, ignore_idx

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.dataset)
        if index < n:
            return self.dataset[index]
        item = self.dataset[index - n]
        return {**item, "labels": [self.ignore_idx] * len(item["labels"])}

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EverySampleSampler(StatefulDistributedSampler):
    """torchdata's ``StatefulDistributedSampler`` (same order, same state), but its padding trains nothing.

    Like PyTorch's ``DistributedSampler`` it repeats the first indices to give every rank
    ``ceil(n / num_replicas)`` of them; here a repeated index ``i`` is yielded as ``n + i``
    (:class:`ZeroWeightPadding`). With ``n`` a multiple of ``num_replicas`` nothing changes.
    """

    def __init__(self, dataset: Sequence[Any], num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        for index in super().__iter__():
            place = (self.yielded - 1) * self.num_replicas + self.rank  # in the padded global order
            yield index if place < n else n + index


@dataclass(frozen=True)
class EpochSteps:
    """How one epoch's micro-batches (the same number on every process) make optimizer steps.

    ``steps = ceil(micro_batches / grad_accum)``: every step accumulates ``grad_accum``
    micro-batches except perhaps the last, which takes the rest.
    """

    micro_batches: int
    grad_accum: int

    @property
    def steps(self) -> int:
        return math.ceil(self.micro_batches / self.grad_accum)

    @property
    def last_step_micro_batches(self) -> int:
        return self.micro_batches - (self.steps - 1) * self.grad_accum

    def ends_step(self, micro_batches_done: int) -> bool:
        """Whether the step is due once ``micro_batches_done`` micro-batches of the epoch have run."""
        return micro_batches_done % self.grad_accum == 0 or micro_batches_done == self.micro_batches

    def describe(self, samples: int, padded_places: int) -> str:
        """One line for the log: what an epoch's steps hold, when the data does not divide evenly."""
        parts = []
        if self.last_step_micro_batches != self.grad_accum:
            parts.append(
                f"the last of its {self.steps} steps accumulates {self.last_step_micro_batches} "
                f"micro-batch(es) instead of {self.grad_accum}"
            )
        if padded_places:
            parts.append(f"{padded_places} zero-weight padding sample(s) give every process as many micro-batches")
        if not parts:
            return ""
        return f"Each epoch trains all {samples} samples once: " + "; ".join(parts) + "."
