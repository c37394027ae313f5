"""Every sample once per epoch: zero-weight padding, and a last, shorter optimizer step."""

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from focusft.data import LengthGroupedSampler
from focusft.data.epoch import EpochSteps, EverySampleSampler, ZeroWeightPadding
from focusft.split_decoder import IGNORE_INDEX


def items(n):
    return [{"tokens": [i, i + 1], "labels": [IGNORE_INDEX, i + 1], "lengths_probe": i} for i in range(n)]


@pytest.mark.parametrize("n, replicas", [(10, 2), (5, 2), (7, 3), (1, 2), (12, 4)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_once_and_every_rank_as_many_indices(n, replicas, shuffle):
    per_rank = [list(EverySampleSampler(items(n), replicas, rank, shuffle=shuffle, seed=3)) for rank in range(replicas)]
    assert len({len(indices) for indices in per_rank}) == 1
    flat = [i for indices in per_rank for i in indices]
    assert sorted(i for i in flat if i < n) == list(range(n))
    assert all(n <= i < 2 * n for i in flat if i >= n) and len(flat) - n < replicas
    # Where torch's sampler repeats index i, this one yields n + i; elsewhere the same order.
    theirs = [
        list(StatefulDistributedSampler(items(n), replicas, rank, shuffle=shuffle, seed=3)) for rank in range(replicas)
    ]
    assert [[i % n for i in indices] for indices in per_rank] == theirs


def test_zero_weight_padding_trains_nothing_and_keeps_the_dataset():
    data = ZeroWeightPadding(items(3))
    assert len(data) == 3 and data[1] == items(3)[1]
    assert data[3 + 1] == {**items(3)[1], "labels": [IGNORE_INDEX, IGNORE_INDEX]}
    with pytest.raises(AttributeError):
        data.no_such_attribute  # noqa: B018


def test_length_grouped_padding_is_zero_weight():
    per_rank = [list(LengthGroupedSampler([5, 3, 8, 1, 9], 2, 2, rank, seed=0)) for rank in range(2)]
    flat = [i for indices in per_rank for i in indices]
    assert len(per_rank[0]) == len(per_rank[1]) == 4
    assert sorted(i for i in flat if i < 5) == list(range(5)) and all(5 <= i < 10 for i in flat if i >= 5)


@pytest.mark.parametrize(
    "micro_batches, grad_accum, steps, last",
    [(5, 2, 3, 1), (4, 2, 2, 2), (5, 1, 5, 1), (3, 4, 1, 3), (7, 3, 3, 1)],
)
def test_steps_are_ceil_and_the_last_one_takes_the_rest(micro_batches, grad_accum, steps, last):
    plan = EpochSteps(micro_batches, grad_accum)
    assert (plan.steps, plan.last_step_micro_batches) == (steps, last)
    ends = [done for done in range(1, micro_batches + 1) if plan.ends_step(done)]
    assert len(ends) == steps and ends[-1] == micro_batches
    assert [b - a for a, b in zip([0, *ends], ends)] == [grad_accum] * (steps - 1) + [last]


def test_one_process_five_samples_batch_one_accumulate_two_makes_three_steps():
    """The issue's reproduction: 2 steps and sample 4 never trained before; now 3 steps and all 5."""
    data = ZeroWeightPadding(items(5))
    loader = StatefulDataLoader(data, batch_size=1, sampler=EverySampleSampler(data, 1, 0, False, 0), collate_fn=list)
    plan = EpochSteps(len(loader), 2)
    assert plan.steps == 3 and plan.describe(5, 0) == (
        "Each epoch trains all 5 samples once: the last of its 3 steps accumulates 1 micro-batch(es) instead of 2."
    )
    assert [batch[0]["tokens"][0] for batch in loader] == [0, 1, 2, 3, 4]
    assert EpochSteps(4, 2).describe(8, 0) == ""


def test_a_restored_sampler_continues_with_the_same_padding():
    full = list(EverySampleSampler(items(5), 2, 1, shuffle=True, seed=4))
    sampler = EverySampleSampler(items(5), 2, 1, shuffle=True, seed=4)
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(2)]
    resumed = EverySampleSampler(items(5), 2, 1, shuffle=True, seed=4)
    resumed.load_state_dict(sampler.state_dict())
    assert head + list(resumed) == full and full[-1] >= 5  # rank 1's last place is padding
