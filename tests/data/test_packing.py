"""Packing: rows of documents with their own ids, and the model sees each document as if alone."""

import pytest
import torch

from focusft.batch import prepare_batch
from focusft.data import collate_focus_batch, synthetic_dataset
from focusft.data.packing import pack_samples
from focusft.masks import dense_mask
from focusft.tiny import seeded_tiny_qwen2_5

I = -100  # noqa: E741


def sample(tokens, context):
    return {"tokens": tokens, "labels": [I if c else t for t, c in zip(tokens, context)], "context": context}


def test_greedy_packing_in_order_with_padding_of_its_own():
    a, b, c = sample([1, 2, 3], [1, 0, 0]), sample([4, 5], [1, 0]), sample([6, 7, 8, 9], [1, 1, 0, 0])
    rows = pack_samples([a, b, c], max_seq_len=6, padding_idx=0)
    assert rows == [
        {
            "tokens": [1, 2, 3, 4, 5, 0],
            "labels": [I, 2, 3, I, 5, I],
            "context": [True, False, False, True, False, True],
            "doc": [0, 0, 0, 1, 1, 2],
            "valid": [True] * 5 + [False],
            "sample_index": [0, 1],
        },
        {
            "tokens": [6, 7, 8, 9, 0, 0],
            "labels": [I, I, 8, 9, I, I],
            "context": [True, True, False, False, True, True],
            "doc": [0, 0, 0, 0, 1, 1],
            "valid": [True] * 4 + [False] * 2,
            "sample_index": [2],
        },
    ]
    with pytest.raises(ValueError, match="Sample 1 has 4 tokens, more than max_seq_len=3"):
        pack_samples([b, c], max_seq_len=3, padding_idx=0)


def test_collated_packed_rows_keep_their_padding_invalid():
    rows = pack_samples([sample([1, 2], [1, 0]), sample([3], [0])], max_seq_len=4, padding_idx=0)
    batch = collate_focus_batch(rows, padding_idx=0)
    assert batch["valid"].tolist() == [[True, True, True, False]]
    assert batch["doc"].tolist() == [[0, 0, 1, 2]]


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
def test_packed_logits_equal_each_document_run_alone(tokenizer, mode):
    kwargs = dict(task="qa1", num_samples=3, target_tokens=300, max_seq_len=1024, seed=4)
    alone = synthetic_dataset(tokenizer, **kwargs)
    packed = synthetic_dataset(tokenizer, **kwargs, packed=True)
    assert len(packed) == 1 and sum(packed[0]["valid"]) < 1024  # three documents and some padding
    model = seeded_tiny_qwen2_5(0).eval()

    def logits(items):
        batch = prepare_batch(collate_focus_batch(items, padding_idx=tokenizer.pad_id), "cpu")
        with torch.no_grad():
            return model(batch.tokens, mask=dense_mask(batch.layout, mode), input_pos=batch.input_pos)[0]

    row = logits([packed[0]])
    assert torch.isfinite(row).all()
    start = 0
    for index in range(len(alone)):
        n = len(alone[index]["tokens"])
        assert packed[0]["tokens"][start : start + n] == alone[index]["tokens"]
        torch.testing.assert_close(row[start : start + n], logits([alone[index]]), atol=1e-5, rtol=1e-5)
        start += n
