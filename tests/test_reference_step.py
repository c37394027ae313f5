"""The optimised bilevel step equals FocuSFT computed the straightforward way (benchmarks/reference.py)."""

import pytest
import torch

from benchmarks.data import synthetic_batch
from benchmarks.reference import lora_from_fast_weights, straightforward_focusft_step
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import build_mask, document_positions
from focusft.split_decoder import IGNORE_INDEX, SplitDecoder
from focusft.tiny import seeded_tiny_qwen2_5

FAST = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.35)


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_optimised_step_equals_straightforward_step(mode, activation_checkpointing):
    # A tight clip with checkpointing, a loose one without: both regimes of the clip are covered.
    inner = InnerLoopConfig(steps=2, lr=1.0, grad_clip=0.01 if activation_checkpointing else 1.0)
    tokens, labels, layout = synthetic_batch(96, 1024, seed=1, device="cpu")
    mask, pos = build_mask(layout, mode, "dense"), document_positions(layout.doc)
    assert (labels != IGNORE_INDEX).sum() > 0

    decoder = seeded_tiny_qwen2_5(0, num_layers=6)
    slots = attach_fast_weight_slots(decoder, FAST)
    model = SplitDecoder(decoder, slots, activation_checkpointing)
    fast = slots.init([5])
    result = bilevel_step(
        model, slots, tokens, labels, mask=mask, input_pos=pos, inner=inner, initial_fast_weights=fast
    )
    (result.loss / result.num_tokens).backward()

    reference = seeded_tiny_qwen2_5(0, num_layers=6)
    outer, inner_losses = straightforward_focusft_step(
        reference,
        lora_from_fast_weights(fast),
        FAST.scale,
        tokens,
        labels,
        mask=mask,
        input_pos=pos,
        steps=inner.steps,
        lr=inner.lr,
        grad_clip=inner.grad_clip,
        activation_checkpointing=activation_checkpointing,
    )

    torch.testing.assert_close((result.loss / result.num_tokens).item(), outer.item(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.inner_losses.tolist(), [*inner_losses, outer.item()], atol=1e-5, rtol=1e-5)
    ours = {n.removeprefix("decoder."): p.grad for n, p in model.named_parameters()}
    ref = dict(reference.named_parameters())
    assert ours.keys() == ref.keys()
    for name, p in ref.items():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-5, rtol=1e-5, msg=name)
