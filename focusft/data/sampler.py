"""Length-grouped distributed sampling: batches of similar lengths, so unpacked batches carry little padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """A ``DistributedSampler`` whose batches hold samples of similar lengths.

    Each epoch shuffles the indices, cuts them into groups of ``group_factor`` global
    batches, sorts each group by length and deals it out in global batches (in shuffled
    order); a global batch is spread over the ranks with a stride, so every rank gets
    samples of about the same length in the same step. Use it with a ``DataLoader``
    whose ``batch_size`` equals ``batch_size`` here. To give every rank as many batches
    it pads the last global batch with zero-weight places ``len(lengths) + i``
    (:class:`focusft.data.epoch.ZeroWeightPadding`; they sort last in their group), or,
    with ``drop_last``, drops the incomplete last global batch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        group_factor: int = 50,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas}).")
        if not lengths:
            raise ValueError("LengthGroupedSampler needs at least one sample.")
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.shuffle, self.seed, self.group_factor, self.drop_last = shuffle, seed, group_factor, drop_last
        self.epoch = 0
        self.yielded, self._resume_at = 0, 0  # indices handed out this epoch; where a restored state resumes
        global_batch = batch_size * num_replicas
        n = len(lengths)
        self.num_global_batches = n // global_batch if drop_last else -(-n // global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_global_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        global_batch = self.batch_size * self.num_replicas
        total = self.num_global_batches * global_batch
        padding = order.repeat(-(-total // n))[n:total] + n  # zero-weight copies of the first indices
        order = torch.cat([order[:total], padding])  # or drop the tail
        lengths = torch.cat([self.lengths, torch.zeros_like(self.lengths)])
        batches = []
        for group in order.split(global_batch * self.group_factor):
            by_length = group[torch.argsort(lengths[group], descending=True, stable=True)]
            batches += list(by_length.split(global_batch))
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        mine = [index for batch in batches for index in batch[self.rank :: self.num_replicas].tolist()]
        self.yielded, self._resume_at = self._resume_at, 0
        for index in mine[self.yielded :]:
            self.yielded += 1
            yield index

    def state_dict(self) -> dict[str, int]:
        """Position within the epoch, for ``StatefulDataLoader`` checkpoints."""
        return {"yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = state["yielded"]
