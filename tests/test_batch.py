"""The collated-batch contract: label shift, document boundaries, positions."""

import pytest
import torch

from focusft.batch import prepare_batch

I = -100  # noqa: E741


def test_labels_shift_and_never_cross_a_document():
    batch = {
        "tokens": torch.tensor([[10, 11, 12, 13, 20, 21, 22, 0]]),
        "labels": torch.tensor([[I, I, 12, 13, 20, I, 22, I]]),
        "context": torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]], dtype=torch.bool),
        "doc": torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2]]),
        "valid": torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool),
    }
    mb = prepare_batch(batch, "cpu")
    assert mb.labels.tolist() == [[I, 12, 13, I, I, 22, I, I]]
    assert mb.input_pos.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    assert torch.equal(mb.layout.valid, batch["valid"])


def test_defaults_are_one_unpadded_document_per_row():
    batch = {
        "tokens": torch.tensor([[1, 2, 3]]),
        "labels": torch.tensor([[I, 2, 3]]),
        "context": torch.tensor([[1, 0, 0]], dtype=torch.bool),
    }
    mb = prepare_batch(batch, "cpu")
    assert mb.labels.tolist() == [[2, 3, I]] and mb.input_pos.tolist() == [[0, 1, 2]]
    assert mb.layout.valid.all() and not mb.layout.doc.any()


def test_bad_batches_are_named():
    with pytest.raises(KeyError, match="context"):
        prepare_batch({"tokens": torch.zeros(1, 2, dtype=torch.long), "labels": torch.zeros(1, 2)}, "cpu")
    with pytest.raises(ValueError, match="labels shape"):
        prepare_batch(
            {
                "tokens": torch.zeros(1, 3, dtype=torch.long),
                "labels": torch.zeros(1, 2, dtype=torch.long),
                "context": torch.zeros(1, 3, dtype=torch.bool),
            },
            "cpu",
        )


def test_collate_pads_with_context_invalid_tokens_of_their_own_document():
    from focusft.data import collate_focus_batch

    samples = [
        {"tokens": [5, 6, 7], "labels": [I, 6, 7], "context": [True, False, False]},
        {"tokens": [8, 9, 10, 11, 12], "labels": [I, I, 10, I, 12], "context": [1, 1, 0, 1, 0], "doc": [0, 0, 0, 1, 1]},
    ]
    batch = collate_focus_batch(samples, padding_idx=0)
    assert batch["tokens"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]]
    assert batch["labels"].tolist() == [[I, 6, 7, I, I], [I, I, 10, I, 12]]
    assert batch["context"].tolist() == [[True, False, False, True, True], [True, True, False, True, False]]
    assert batch["doc"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert batch["valid"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    with pytest.raises(ValueError, match="different lengths"):
        collate_focus_batch([{"tokens": [1, 2], "labels": [1], "context": [True, True]}])
