"""The bilevel step does no work it does not need: counted matmul FLOPs against the minimum.

Weight gradients and activation recomputation are matrix products, so FLOP counts
(``torch.utils.flop_counter``) show both. The minimum is measured, not assumed: the
same step with θ frozen cannot compute θ-gradients.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import dense_mask, document_positions
from focusft.split_decoder import SplitDecoder
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import random_batch


def build(activation_checkpointing=False, inner_activation_checkpointing=False):
    decoder = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(decoder, FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5))
    return SplitDecoder(decoder, slots, activation_checkpointing, inner_activation_checkpointing), slots


def run_step(model, slots):
    tokens, labels, layout = random_batch(2, 48, 0)
    return bilevel_step(
        model,
        slots,
        tokens,
        labels,
        mask=dense_mask(layout, "bidir_context"),
        input_pos=document_positions(layout.doc),
        inner=InnerLoopConfig(steps=2),
        initial_fast_weights=slots.init([0]),
    )


def step_flops(model, slots) -> int:
    with FlopCounterMode(display=False) as counter:
        run_step(model, slots)
    return counter.get_total_flops()


def test_inner_backward_computes_no_theta_gradients():
    model, slots = build()
    with_theta = step_flops(model, slots)  # trunk, K inner forward+backward, outer forward
    for p in model.parameters():
        p.requires_grad_(False)
    assert step_flops(model, slots) == with_theta


def test_inner_passes_are_not_recomputed_unless_asked():
    plain = step_flops(*build())
    assert step_flops(*build(activation_checkpointing=True)) == plain
    assert step_flops(*build(activation_checkpointing=True, inner_activation_checkpointing=True)) > plain


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_inner_activation_checkpointing_gives_the_same_step(activation_checkpointing):
    results, grads = [], []
    for inner_ac in (False, True):
        model, slots = build(activation_checkpointing, inner_ac)
        result = run_step(model, slots)
        result.loss.backward()
        results.append(result)
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(results[0].loss, results[1].loss, atol=0, rtol=0)
    torch.testing.assert_close(results[0].inner_losses, results[1].inner_losses, atol=0, rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
