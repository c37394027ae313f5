"""Selective checkpointing, activation offloading and the tiled FFN give the plain step's results, for less memory."""

import copy
from dataclasses import replace

import pytest
import torch
from torch.func import functional_call

from benchmarks.memory import peak_memory_growth
from focusft import documents as documents_module
from focusft.activation_memory import ActivationOffload, inner_checkpoint_mode, run_checkpointed
from focusft.bilevel import InnerLoopConfig
from focusft.documents import Documents
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import dense_mask, document_positions
from focusft.split_decoder import SplitDecoder
from focusft.tiled_ffn import TiledFeedForward, apply_tiled_ffn
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import documents_layout, shifted_labels
from tests.test_bilevel import packed_step

FAST = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)
INNER = InnerLoopConfig(steps=2, lr=1.0, grad_clip=0.05)
# Rows of documents: one packed row (chunk routing), two rows of one document (row routing), one document.
ROWS = {"chunks": [[30, 12, 9]], "rows": [[20], [13]], "shared": [[41]]}


def build(activation_checkpointing=True, inner_checkpointing="none", offload=None, tile=None, fast_cfg=FAST):
    decoder = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(decoder, fast_cfg)
    apply_tiled_ffn(decoder, tile)
    return SplitDecoder(decoder, slots, activation_checkpointing, inner_checkpointing, offload), slots


def batch(routing):
    rows = ROWS[routing]
    generator = torch.Generator().manual_seed(0)
    layout = documents_layout(rows, 56 if len(rows) == 1 else 20, generator)
    tokens = torch.randint(0, 500, layout.shape, generator=generator)
    return tokens, shifted_labels(tokens, layout), layout


def nonzero_fast_weights(slots, count):
    """φ_0 with B ≠ 0, so that every fast-weight tensor has a gradient from the first step."""
    fast = slots.init(list(range(10, 10 + count)))
    g = torch.Generator().manual_seed(1)
    return {
        layer: {n: (t if n.endswith("fast_a") else 0.05 * torch.randn(t.shape, generator=g)) for n, t in ws.items()}
        for layer, ws in fast.items()
    }


def run(model, slots, routing="chunks", mode="bidir_context"):
    """One FocuSFT micro-batch with its outer backward: the result and θ's gradients."""
    tokens, labels, layout = batch(routing)
    documents = Documents.from_layout(layout)
    assert documents.routing == routing
    fast = nonzero_fast_weights(slots, documents.count)
    result = packed_step(model, slots, tokens, labels, layout, mode, INNER, fast)
    (result.loss / result.num_tokens).backward()
    return result, {n: p.grad for n, p in model.named_parameters()}


def assert_same_step(got, expected, tol):
    (result, grads), (reference, reference_grads) = got, expected
    assert result.skipped_updates.item() == reference.skipped_updates.item() == 0
    torch.testing.assert_close(result.loss, reference.loss, atol=tol, rtol=tol)
    torch.testing.assert_close(result.document_losses, reference.document_losses, atol=tol, rtol=tol)
    for layer, ws in reference.fast_weights.items():
        for name, value in ws.items():
            torch.testing.assert_close(result.fast_weights[layer][name], value, atol=tol, rtol=tol, msg=name)
    assert grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=tol, rtol=tol, msg=name)


@pytest.fixture(autouse=True)
def short_chunks(monkeypatch):
    monkeypatch.setattr(documents_module, "CHUNK_TOKENS", 8)  # documents span several chunks


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_checkpointed_inner_passes_give_the_plain_step(mode):
    plain = run(*build(inner_checkpointing="none"))
    assert_same_step(run(*build(inner_checkpointing=mode)), plain, 1e-6)


def test_selective_checkpointing_keeps_less_than_the_plain_inner_pass():
    """Peak memory of the inner passes: selective below none, full below selective (the attention outputs kept).

    Three adapted layers: the first one's attention is in the trunk, the two above keep theirs.
    """
    generator = torch.Generator().manual_seed(0)
    layout = documents_layout([[256]], 256, generator)
    tokens = torch.randint(0, 500, layout.shape, generator=generator)
    labels = shifted_labels(tokens, layout)
    mask, pos = dense_mask(layout, "bidir_context"), document_positions(layout.doc)
    peaks = {}
    for mode in ("none", "selective", "full"):
        model, slots = build(inner_checkpointing=mode, fast_cfg=replace(FAST, layer_fraction=0.75))
        hidden = model("trunk", tokens, mask=mask, input_pos=pos).detach()
        fast = {layer: {n: t[0].requires_grad_() for n, t in ws.items()} for layer, ws in slots.init([0]).items()}
        leaves = [t for ws in fast.values() for t in ws.values()]

        def inner_pass(model=model, hidden=hidden, fast=fast, leaves=leaves):
            losses = model("head", hidden, mask=mask, input_pos=pos, labels=labels, fast_weights=fast)
            torch.autograd.grad(losses.sum(), leaves)

        peaks[mode] = peak_memory_growth(inner_pass, torch.device("cpu"))
    assert peaks["full"] < peaks["selective"] < peaks["none"]


def test_inner_checkpoint_mode_follows_the_two_switches():
    assert inner_checkpoint_mode(False, False) == "none"
    assert inner_checkpoint_mode(True, False) == "selective"
    assert inner_checkpoint_mode(True, True) == inner_checkpoint_mode(False, True) == "full"
    with pytest.raises(ValueError, match="checkpoint mode"):
        run_checkpointed(torch.sin, torch.ones(2, requires_grad=True), "some")


class CountingOffload:
    """torch's save_on_cpu, counting the tensors it moves."""

    def __init__(self):
        self.contexts = 0
        self.packed = 0

    def __call__(self):
        self.contexts += 1
        counter = self

        def pack(tensor):
            counter.packed += 1
            return tensor.device, tensor.to("cpu", copy=True)

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda packed: packed[1].to(packed[0]))


@pytest.mark.parametrize("inner_checkpointing", ["selective"])
def test_offloaded_activations_give_the_plain_step(inner_checkpointing):
    plain = run(*build(inner_checkpointing=inner_checkpointing))
    counting = CountingOffload()
    offload = ActivationOffload("cpu", factory=counting)
    assert_same_step(run(*build(inner_checkpointing=inner_checkpointing, offload=offload)), plain, 1e-6)
    assert counting.contexts == 1 + INNER.steps  # the trunk and outer head share one; one per inner pass
    assert counting.packed > 0
    default = ActivationOffload("cpu")  # torch's save_on_cpu on a CPU
    assert_same_step(run(*build(inner_checkpointing=inner_checkpointing, offload=default)), plain, 1e-6)


@pytest.mark.parametrize(("routing", "tile"), [("chunks", 5), ("rows", 16), ("shared", 16)])
def test_tiled_ffn_gives_the_untiled_step(routing, tile):
    """Losses, adapted φ (so the inner φ-gradients) and θ-gradients equal the untiled step's."""
    plain = run(*build(inner_checkpointing="selective"), routing=routing)
    assert_same_step(run(*build(inner_checkpointing="selective", tile=tile), routing=routing), plain, 1e-5)


@pytest.mark.parametrize("routing", ["chunks", "rows", "shared"])
def test_tiled_ffn_gradients_of_input_weights_and_fast_weights(routing):
    """One FFN with fast weights filled: output and every gradient equal the untiled FFN's."""
    decoder = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(decoder, FAST)
    untiled = decoder.layers[slots.first_layer].mlp
    tiled = TiledFeedForward(copy.deepcopy(untiled), tile_tokens=7)
    tokens, _, layout = batch(routing)
    documents = Documents.from_layout(layout)
    fast = nonzero_fast_weights(slots, documents.count)[slots.first_layer]
    fill = {n.removeprefix("mlp."): t for n, t in documents.slot_values({0: fast})[0].items()}
    x = torch.randn(*layout.shape, untiled.w1.in_features, generator=torch.Generator().manual_seed(2))
    grad_out = torch.randn(*layout.shape, untiled.w2.out_features, generator=torch.Generator().manual_seed(3))
    results = []
    for ffn in (untiled, tiled):
        leaves = {n: t.detach().requires_grad_() for n, t in fast.items()}
        values = {**fill, **{n.removeprefix("mlp."): t for n, t in documents.slot_values({0: leaves})[0].items()}}
        x_leaf = x.clone().requires_grad_()
        out = functional_call(ffn, values, (x_leaf,))
        wanted = [x_leaf, *ffn.parameters(), *leaves.values()]
        results.append([out, *torch.autograd.grad(out, wanted, grad_out)])
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_tiled_ffn_keeps_less_memory():
    """Forward + backward of one FFN on 512 tokens: tiles of 64 keep far less than the untiled FFN."""
    ffn = seeded_tiny_qwen2_5(0).layers[0].mlp
    x = torch.randn(1, 512, ffn.w1.in_features, requires_grad=True)

    def step(module):
        return lambda: module(x).square().sum().backward()

    untiled = peak_memory_growth(step(ffn), torch.device("cpu"))
    tiled = peak_memory_growth(step(TiledFeedForward(ffn, 64)), torch.device("cpu"))
    assert tiled < 0.6 * untiled


def test_bad_tile_size_is_rejected():
    with pytest.raises(ValueError, match="ffn_tile_tokens"):
        apply_tiled_ffn(seeded_tiny_qwen2_5(0), 0)
