"""Length-grouped distributed sampling."""

import random

import pytest

from focusft.data import LengthGroupedSampler


def rank_batches(lengths, batch_size, replicas, **kwargs):
    """Per step, the batch of each rank."""
    per_rank = [list(LengthGroupedSampler(lengths, batch_size, replicas, rank, **kwargs)) for rank in range(replicas)]
    steps = len(per_rank[0]) // batch_size
    return [[ranks[s * batch_size : (s + 1) * batch_size] for ranks in per_rank] for s in range(steps)]


def test_every_index_once_and_each_step_a_contiguous_run_of_the_sorted_lengths():
    rng = random.Random(0)
    lengths = rng.sample(range(10, 4000), 96)  # distinct: the sorted order is unique
    steps = rank_batches(lengths, batch_size=4, replicas=3, seed=1, group_factor=100)
    assert sorted(i for step in steps for batch in step for i in batch) == list(range(96))
    ranked = sorted(range(96), key=lambda i: (-lengths[i], i))
    for step in steps:
        indices = [i for batch in step for i in batch]
        positions = sorted(ranked.index(i) for i in indices)
        assert positions == list(range(positions[0], positions[0] + 12))
        assert all(len(batch) == 4 for batch in step)


def test_epochs_reshuffle_deterministically_and_uneven_sizes_pad_or_drop():
    lengths = list(range(50))
    sampler = LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, rank=1, seed=3)
    first = list(sampler)
    assert list(sampler) == first and len(first) == len(sampler) == 4 * 7  # 50 -> 7 global batches of 8
    sampler.set_epoch(1)
    assert list(sampler) != first
    dropped = LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, rank=0, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 4 * 6
    with pytest.raises(ValueError, match="rank 2"):
        LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, rank=2)


def test_length_grouping_cuts_padding():
    rng = random.Random(1)
    lengths = [rng.randrange(10, 4000) for _ in range(400)]

    def padding(steps):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for s in steps for b in s)

    grouped = padding(rank_batches(lengths, batch_size=8, replicas=1, seed=0))
    shuffled = padding(rank_batches(lengths, batch_size=8, replicas=1, seed=0, group_factor=1))
    assert grouped < shuffled / 10


def test_restored_state_continues_the_epoch_where_it_stopped():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12]
    full = list(LengthGroupedSampler(lengths, batch_size=2, num_replicas=2, rank=1, seed=3, group_factor=2))
    sampler = LengthGroupedSampler(lengths, batch_size=2, num_replicas=2, rank=1, seed=3, group_factor=2)
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(3)]
    resumed = LengthGroupedSampler(lengths, batch_size=2, num_replicas=2, rank=1, seed=3, group_factor=2)
    resumed.load_state_dict(sampler.state_dict())
    assert head + list(resumed) == full
    assert list(resumed) == full  # the next epoch starts from the beginning again
