"""Which tokens share fast weights, and the per-document low-rank product, against brute force."""

import pytest
import torch

from focusft import documents as documents_module
from focusft.batch import prepare_batch
from focusft.data import collate_focus_batch
from focusft.documents import Documents, fast_weight_seed
from focusft.fast_weights import FastLoRALinear
from focusft.masks import TokenLayout
from tests.layouts import brute_force_documents, random_layout


@pytest.mark.parametrize("seed", range(6))
def test_documents_and_chunks_match_a_walk_over_the_rows(seed, monkeypatch):
    monkeypatch.setattr(documents_module, "CHUNK_TOKENS", 5)  # cut long documents into several chunks
    layout = random_layout(3, 40, torch.Generator().manual_seed(seed))
    expected = brute_force_documents(layout)
    docs = Documents.from_layout(layout)
    count = int(expected.max()) + 1
    assert docs.count == docs.found == max(count, 1)
    if docs.routing == "shared":
        return
    assert torch.equal(docs.token_document, expected)
    if docs.routing == "rows":
        assert count == 3 and all(len(expected[r][expected[r] >= 0].unique()) == 1 for r in range(3))
        return
    flat = expected.flatten()
    seen = []
    for chunk, document in zip(docs.chunk_tokens.tolist(), docs.chunk_document.tolist()):
        real = [p for p in chunk if p < flat.numel()]
        assert real and all(flat[p] == document for p in real)
        assert len(chunk) <= 5 and chunk == real + [flat.numel()] * (len(chunk) - len(real))
        seen += real
    assert sorted(seen) == (flat >= 0).nonzero().squeeze(1).tolist()  # every valid token exactly once


def layout_of(docs_per_row: list[list[int]], width: int) -> TokenLayout:
    """Rows of documents of the given lengths, then padding."""
    doc = torch.zeros(len(docs_per_row), width, dtype=torch.long)
    valid = torch.zeros(len(docs_per_row), width, dtype=torch.bool)
    for row, lengths in enumerate(docs_per_row):
        pos = 0
        for d, length in enumerate(lengths):
            doc[row, pos : pos + length] = d
            pos += length
        valid[row, :pos] = True
        doc[row, pos:] = len(lengths)
    return TokenLayout(context=torch.zeros_like(valid), doc=doc, valid=valid)


def test_routing_follows_the_batch_shape():
    assert Documents.from_layout(layout_of([[7]], 9)).routing == "shared"
    assert Documents.from_layout(layout_of([[7], [9]], 9)).routing == "rows"
    packed = Documents.from_layout(layout_of([[3, 4], [9]], 9))
    assert packed.routing == "chunks" and packed.count == 3
    merged = Documents.from_layout(layout_of([[3, 4], [9]], 9), scope="micro_batch")
    assert merged.routing == "shared" and merged.count == 1 and merged.found == 3
    with pytest.raises(ValueError, match="fast_weight_scope"):
        Documents.from_layout(layout_of([[3]], 3), scope="sample")


def test_sample_index_follows_document_ids_and_recurring_ids_are_rejected():
    layout = layout_of([[3, 4], [9]], 9)
    docs = Documents.from_layout(layout, torch.tensor([[11, 5], [2, -1]]))
    assert docs.sample_index == (11, 5, 2)
    with pytest.raises(ValueError, match="no dataset index"):
        Documents.from_layout(layout, torch.tensor([[11, -1], [2, -1]]))
    recurring = TokenLayout(
        context=torch.zeros(1, 6, dtype=torch.bool),
        doc=torch.tensor([[0, 0, 1, 1, 0, 0]]),
        valid=torch.ones(1, 6, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="recurs"):
        Documents.from_layout(recurring)


def per_token_reference(x, a, b, token_document):
    """The low-rank delta token by token, with the token's own document's pair (zero on padding)."""
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for t, d in enumerate(token_document.flatten().tolist()):
        rows.append(torch.zeros(b.shape[1], dtype=x.dtype) if d < 0 else b[d] @ (a[d] @ flat[t]))
    return torch.stack(rows).view(*x.shape[:-1], -1)


@pytest.mark.parametrize("shape", [[[3, 4], [9]], [[1, 12, 2], [5, 5]], [[7], [4]]])
def test_per_document_low_rank_product_and_gradients_equal_a_token_loop(shape, monkeypatch):
    monkeypatch.setattr(documents_module, "CHUNK_TOKENS", 4)
    layout = layout_of(shape, 15)
    docs = Documents.from_layout(layout)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(shape), 15, 6, generator=g, dtype=torch.float64)
    a = torch.randn(docs.count, 3, 6, generator=g, dtype=torch.float64)
    b = torch.randn(docs.count, 5, 3, generator=g, dtype=torch.float64)
    linear = FastLoRALinear(6, 5, bias=True, scale=0.5, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (x, a, b)]
    slots = docs.slot_values({0: {"fast_a": inputs[1], "fast_b": inputs[2]}})[0]
    for name, value in slots.items():
        setattr(linear, name, value)
    got = linear(inputs[0])
    reference_inputs = [t.clone().requires_grad_() for t in (x, a, b)]
    expected = torch.nn.functional.linear(reference_inputs[0], linear.weight, linear.bias) + 0.5 * per_token_reference(
        *reference_inputs, docs.token_document
    )
    valid = layout.valid[..., None]
    if docs.routing == "rows":  # padding shares its row's pair there; its output is never used
        got, expected = got * valid, expected * valid
    torch.testing.assert_close(got, expected)
    upstream = torch.randn(got.shape, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad(got, inputs, upstream)
    expected_grads = torch.autograd.grad(expected, reference_inputs, upstream)
    for name, got_grad, expected_grad in zip("xab", got_grads, expected_grads):
        if name == "x" and docs.routing == "rows":
            got_grad, expected_grad = got_grad * valid, expected_grad * valid
        torch.testing.assert_close(got_grad, expected_grad, msg=name)


def test_a_sample_draws_the_same_initial_fast_weights_packed_or_alone():
    """φ_0 seeds come from (run seed, epoch, dataset index) only: not the row, slot, batch or rank."""
    from focusft.data.packing import pack_samples

    samples = [
        {"tokens": [1, 2, 3], "labels": [-100, 2, 3], "context": [True, False, False]},
        {"tokens": [4, 5], "labels": [-100, 5], "context": [True, False]},
        {"tokens": [6, 7, 8, 9], "labels": [-100, -100, 8, 9], "context": [True, True, False, False]},
    ]
    packed = prepare_batch(collate_focus_batch(pack_samples(samples, 9, padding_idx=0)), "cpu").documents
    alone = [
        prepare_batch(collate_focus_batch([{**s, "sample_index": [i]}]), "cpu").documents for i, s in enumerate(samples)
    ]
    assert packed.sample_index == (0, 1, 2) == tuple(d.sample_index[0] for d in alone)
    seeds = [fast_weight_seed(1234, 3, i) for i in packed.sample_index]
    assert len(set(seeds)) == 3 and seeds == [fast_weight_seed(1234, 3, d.sample_index[0]) for d in alone]
    assert fast_weight_seed(1234, 4, 0) != seeds[0] and fast_weight_seed(1, 3, 0) != seeds[0]


@pytest.mark.parametrize("shape", [[[7]], [[3, 4], [9]], [[1, 12, 2], [5, 5]], [[7], [4]]])
def test_a_layer_run_on_some_positions_only_routes_each_token_to_its_own_document(shape, monkeypatch):
    """``at_positions``: the tokens kept as one row ``[1, N]`` (the last layer's response rows) keep their φ."""
    monkeypatch.setattr(documents_module, "CHUNK_TOKENS", 4)
    layout = layout_of(shape, 15)
    docs = Documents.from_layout(layout)
    g = torch.Generator().manual_seed(1)
    valid = layout.valid.flatten().nonzero().squeeze(1)
    positions = valid[torch.randperm(len(valid), generator=g)[: len(valid) // 2]].sort().values
    x = torch.randn(len(shape), 15, 6, generator=g, dtype=torch.float64)
    a = torch.randn(docs.count, 3, 6, generator=g, dtype=torch.float64)
    b = torch.randn(docs.count, 5, 3, generator=g, dtype=torch.float64)
    linear = FastLoRALinear(6, 5, bias=False, scale=0.5, dtype=torch.float64)
    for name, value in docs.at_positions(positions).slot_values({0: {"fast_a": a, "fast_b": b}})[0].items():
        setattr(linear, name, value)
    kept = x.flatten(0, 1)[positions]
    got = linear(kept[None])[0]
    expected = kept @ linear.weight.T
    for row, position in enumerate(positions.tolist()):  # each token with its own document's pair, one by one
        d = int(docs.token_document.flatten()[position]) if docs.routing != "shared" else 0
        expected[row] += 0.5 * (b[d] @ (a[d] @ kept[row]))
    torch.testing.assert_close(got, expected)
