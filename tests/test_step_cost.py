"""The bilevel step does no work it does not need: counted matmul FLOPs against the minimum.

Weight gradients and activation recomputation are matrix products, so FLOP counts
(``torch.utils.flop_counter``) show both. The minimum is measured, not assumed: the
same step with θ frozen cannot compute θ-gradients.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from focusft.activation_memory import ATTENTION_OPS
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import dense_mask, document_positions
from focusft.split_decoder import SplitDecoder
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import random_batch


def build(activation_checkpointing=False, inner_checkpointing="none"):
    decoder = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(decoder, FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5))
    return SplitDecoder(decoder, slots, activation_checkpointing, inner_checkpointing), slots


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


class AttentionCalls(TorchDispatchMode):
    """Counts attention forward calls (the flop counter does not count the CPU SDPA kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in ATTENTION_OPS
        return func(*args, **(kwargs or {}))


def step_attention_calls(model, slots) -> int:
    with AttentionCalls() as counter:
        run_step(model, slots)
    return counter.calls


def test_inner_passes_are_recomputed_only_as_asked():
    """Selective checkpointing recomputes the rest of the layer but keeps the attention outputs.

    The first adapted layer's attention runs in the trunk, once: an inner pass attends in the others only.
    """
    plain = build()
    assert step_flops(*build(activation_checkpointing=True)) == step_flops(*plain)
    selective = build(activation_checkpointing=True, inner_checkpointing="selective")
    full = build(activation_checkpointing=True, inner_checkpointing="full")
    assert step_flops(*plain) < step_flops(*selective)
    layers, steps = 2, 2  # adapted layers of the 4-layer model at fraction 0.5, inner steps
    assert step_attention_calls(*selective) == step_attention_calls(*plain)
    assert step_attention_calls(*full) == step_attention_calls(*plain) + (layers - 1) * steps


@pytest.mark.parametrize(("activation_checkpointing", "inner_checkpointing"), [(False, "full"), (True, "selective")])
def test_inner_activation_checkpointing_gives_the_same_step(activation_checkpointing, inner_checkpointing):
    results, grads = [], []
    for inner_ac in ("none", inner_checkpointing):
        model, slots = build(activation_checkpointing, inner_ac)
        result = run_step(model, slots)
        result.loss.backward()
        results.append(result)
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(results[0].loss, results[1].loss, atol=0, rtol=0)
    torch.testing.assert_close(results[0].inner_losses, results[1].inner_losses, atol=0, rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
