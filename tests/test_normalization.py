"""Outer-loss normalisation (docs/DESIGN.md section 3b) against documents trained alone, in any layout."""

import pytest
import torch

from focusft.bilevel import InnerLoopConfig
from focusft.config import ConfigError, FocusConfig
from focusft.masks import TokenLayout
from focusft.normalization import document_of_tokens, outer_loss
from tests.layouts import IGNORE_INDEX, brute_force_documents, random_layout, shifted_labels
from tests.test_bilevel import FAST, alone, build, document, packed_inputs, packed_step, reference_bilevel

LENGTHS = [30, 12, 20, 9]  # four documents with responses of different lengths
SEEDS = [10, 11, 12, 13]  # each document's φ_0
INNER = InnerLoopConfig(steps=2, lr=1.0, grad_clip=1.0)
MODE = "bidir_context"
# Micro-batches of each layout: per micro-batch, its rows, each a list of document numbers.
LAYOUTS = {
    "packed": [[[0, 1, 2, 3]]],
    "batched": [[[0], [1], [2], [3]]],
    "accumulated": [[[0, 1]], [[2], [3]]],
    "accumulated_mixed": [[[3], [1, 0]], [[2]]],
}


@pytest.fixture(scope="module")
def documents():
    """The four documents: ``(tokens, context)`` of each, as 1-D tensors."""
    tokens, _, layout = packed_inputs([LENGTHS], sum(LENGTHS) + 3, seed=1)
    where = brute_force_documents(layout)
    return [(tokens[where == d], layout.context[where == d]) for d in range(len(LENGTHS))]


@pytest.fixture(scope="module")
def alone_gradients(documents):
    """Each document trained on its own by the written-out reference: (response tokens, θ-gradient of its mean)."""
    plain, _, slots = build(fast_cfg=FAST)
    out = []
    for d, seed in enumerate(SEEDS):
        tokens, labels, layout = micro_batch(documents, [[d]])
        t, lab, m, p = alone(tokens, labels, layout, 0, MODE)
        *_, grads, _, _, _ = reference_bilevel(plain, document(slots.init([seed]), 0), FAST, INNER, t, lab, m, p)
        out.append(((lab != IGNORE_INDEX).sum().item(), grads))
    return out


def micro_batch(documents, rows):
    """Tokens, shifted labels and layout of rows that pack the given documents, right-padded."""
    width = max(sum(len(documents[d][0]) for d in row) for row in rows) + 2
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    context = torch.ones(len(rows), width, dtype=torch.bool)
    doc = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, row in enumerate(rows):
        pos = 0
        for j, d in enumerate(row):
            t, c = documents[d]
            tokens[r, pos : pos + len(t)], context[r, pos : pos + len(t)] = t, c
            doc[r, pos : pos + len(t)] = j
            pos += len(t)
        valid[r, :pos] = True
        doc[r, pos:] = len(row)
    layout = TokenLayout(context=context, doc=doc, valid=valid)
    return tokens, shifted_labels(tokens, layout), layout


def expected_gradient(alone_gradients, normalization):
    """Σ_d w_d ∇θ(mean loss of d alone): w_d = 1/D (sample) or n_d / Σn (token)."""
    total = sum(n for n, _ in alone_gradients)
    weights = [1 / len(alone_gradients) if normalization == "sample" else n / total for n, _ in alone_gradients]
    return {
        name: sum(w * grads[name] for w, (_, grads) in zip(weights, alone_gradients)) for name in alone_gradients[0][1]
    }


def step_gradient(documents, micro_batches, normalization):
    """One optimizer step's θ-gradient as the recipe makes it: Σ backpropagated losses ÷ Σ weights."""
    _, model, slots = build(fast_cfg=FAST)
    weight = 0
    for rows in micro_batches:
        tokens, labels, layout = micro_batch(documents, rows)
        fast = slots.init([SEEDS[d] for row in rows for d in row])
        result = packed_step(model, slots, tokens, labels, layout, MODE, INNER, fast)
        outer = outer_loss(result.token_losses, labels, layout, normalization)
        if normalization == "token":  # bit-identical to the loss the recipe backpropagated before
            assert torch.equal(outer.loss, result.loss) and outer.weight.item() == result.num_tokens.item()
        assert outer.documents.item() == sum(len(row) for row in rows)
        outer.loss.backward()
        weight += outer.weight.item()
    return {name.removeprefix("decoder."): p.grad / weight for name, p in model.named_parameters()}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("normalization", ["sample", "token"])
def test_the_step_gradient_is_the_weighted_sum_of_documents_trained_alone(
    documents, alone_gradients, layout, normalization
):
    got = step_gradient(documents, LAYOUTS[layout], normalization)
    expected = expected_gradient(alone_gradients, normalization)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_sample_and_token_weighting_really_differ_on_these_documents(alone_gradients):
    sample, token = (expected_gradient(alone_gradients, n) for n in ("sample", "token"))
    difference = torch.cat([(sample[k] - token[k]).flatten() for k in sample]).norm()
    assert difference / torch.cat([t.flatten() for t in token.values()]).norm() > 0.05


def test_a_document_without_response_tokens_is_not_counted(documents):
    tokens, _, layout = micro_batch(documents, [[0, 1], [2]])
    layout.context[brute_force_documents(layout) == 1] = True  # document 1: context only (as zero-weight padding)
    labels = shifted_labels(tokens, layout)
    losses = torch.rand(int((labels != IGNORE_INDEX).sum()), dtype=torch.float64)
    outer = outer_loss(losses, labels, layout, "sample")
    assert outer.weight.item() == outer.documents.item() == 2
    document = brute_force_documents(layout)[labels != IGNORE_INDEX]
    means = [losses[document == d].mean() for d in (0, 2)]
    torch.testing.assert_close(outer.loss, sum(means))


def test_each_token_gets_its_document_as_a_walk_over_the_rows_finds_it():
    for seed in range(5):
        layout = random_layout(3, 40, torch.Generator().manual_seed(seed))
        assert torch.equal(document_of_tokens(layout), brute_force_documents(layout))


def test_loss_normalization_is_validated():
    assert FocusConfig.from_section(None).loss_normalization == "token"
    assert FocusConfig.from_section({"loss_normalization": "sample"}).loss_normalization == "sample"
    with pytest.raises(ConfigError, match=r"focusft.loss_normalization must be one of \['token', 'sample'\]"):
        FocusConfig.from_section({"loss_normalization": "document"})
