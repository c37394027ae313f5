"""The bilevel step against an independent implementation with LoRA as ordinary modules."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FFN_PROJECTIONS, FastWeightConfig, attach_fast_weight_slots
from focusft.masks import dense_mask, document_positions
from focusft.split_decoder import SplitDecoder
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import IGNORE_INDEX, random_batch


class ReferenceLoRALinear(nn.Module):
    """A LoRA-adapted linear layer built from ordinary modules and real parameters."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base = base
        self.lora_a = nn.Linear(a.shape[1], a.shape[0], bias=False)
        self.lora_b = nn.Linear(b.shape[1], b.shape[0], bias=False)
        with torch.no_grad():
            self.lora_a.weight.copy_(a)
            self.lora_b.weight.copy_(b)
        self.scale = scale

    def forward(self, x):
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


def reference_bilevel(model, fast, fast_cfg, inner, tokens, labels, mask, pos):
    """docs/DESIGN.md section 1 written out directly on the plain decoder's full forward."""
    model = copy.deepcopy(model)
    lora = []
    for layer_index, weights in fast.items():
        mlp = model.layers[layer_index].mlp
        for name in fast_cfg.target_modules:
            proj = FFN_PROJECTIONS[name]
            module = ReferenceLoRALinear(
                getattr(mlp, proj), weights[f"mlp.{proj}.fast_a"], weights[f"mlp.{proj}.fast_b"], fast_cfg.scale
            )
            setattr(mlp, proj, module)
            lora += [module.lora_a.weight, module.lora_b.weight]
    initial = [p.detach().clone() for p in lora]

    def loss_fn():
        logits = model(tokens, mask=mask, input_pos=pos)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)

    losses, clipped = [], 0
    for _ in range(inner.steps):
        loss = loss_fn()
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, lora)
        with torch.no_grad():
            for p, g in zip(lora, grads):
                norm = g.norm()
                if norm > inner.grad_clip:
                    g = g * inner.grad_clip / (norm + 1e-12)
                    clipped += 1
                p -= inner.lr * g
    for p in lora:
        p.requires_grad_(False)
    outer = loss_fn()
    outer.backward()
    losses.append(outer.item())
    delta = torch.cat([(p - p0).flatten() for p, p0 in zip(lora, initial)]).norm()
    base_grads = {n.replace(".base.", "."): p.grad for n, p in model.named_parameters() if p.requires_grad}
    return outer.item(), losses, base_grads, delta.item(), clipped


def build(seed=0, fast_cfg=None, activation_checkpointing=False):
    plain = seeded_tiny_qwen2_5(seed)
    model = copy.deepcopy(plain)
    slots = attach_fast_weight_slots(model, fast_cfg or FastWeightConfig())
    return plain, SplitDecoder(model, slots, activation_checkpointing), slots


def inputs(mode="bidir_context", seed=0):
    tokens, labels, layout = random_batch(2, 48, seed)
    return tokens, labels, dense_mask(layout, mode), document_positions(layout.doc)


def step(model, slots, batch, **kwargs):
    tokens, labels, mask, pos = batch
    return bilevel_step(model, slots, tokens, labels, mask=mask, input_pos=pos, **kwargs)


def nonzero_fast_weights(slots, seed):
    """φ_0 with B ≠ 0 too, so that A gets a gradient from the first step."""
    fast = slots.init(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    return {
        layer: {n: (t if n.endswith("fast_a") else 0.05 * torch.randn(t.shape, generator=g)) for n, t in ws.items()}
        for layer, ws in fast.items()
    }


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
@pytest.mark.parametrize("activation_checkpointing", [False, True])
@pytest.mark.parametrize("zero_b", [True, False])
@pytest.mark.parametrize("grad_clip", [1.0, 0.002])
def test_bilevel_step_matches_reference_implementation(mode, activation_checkpointing, zero_b, grad_clip):
    fast_cfg = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)
    inner = InnerLoopConfig(steps=2, lr=1.0, grad_clip=grad_clip)
    plain, model, slots = build(fast_cfg=fast_cfg, activation_checkpointing=activation_checkpointing)
    batch = inputs(mode)
    tokens, labels, mask, pos = batch
    fast = slots.init(torch.Generator().manual_seed(3)) if zero_b else nonzero_fast_weights(slots, 3)

    result = step(model, slots, batch, inner=inner, initial_fast_weights=fast)
    (result.loss / result.num_tokens).backward()
    ref_loss, ref_losses, ref_grads, ref_delta, clipped = reference_bilevel(
        plain, fast, fast_cfg, inner, tokens, labels, mask, pos
    )
    assert (clipped > 0) == (grad_clip < 1.0)  # both regimes of the clip are exercised

    assert result.num_tokens.item() == (labels != IGNORE_INDEX).sum().item() > 0
    torch.testing.assert_close((result.loss / result.num_tokens).item(), ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.inner_losses.tolist(), ref_losses, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.fast_weight_delta_norm.item(), ref_delta, atol=1e-5, rtol=1e-5)
    grads = {n.removeprefix("decoder."): p.grad for n, p in model.named_parameters()}
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=1e-5, msg=name)
    assert result.skipped_updates.item() == 0


def test_inner_steps_lower_the_inner_loss():
    _, model, slots = build()
    batch = inputs()
    result = step(
        model,
        slots,
        batch,
        inner=InnerLoopConfig(),
        generator=torch.Generator().manual_seed(0),
    )
    losses = result.inner_losses.tolist()
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]
    assert result.fast_weight_delta_norm.item() > 0


def test_fast_weights_get_no_outer_gradient():
    _, model, slots = build()
    batch = inputs()
    fast = slots.init(torch.Generator().manual_seed(0))
    result = step(model, slots, batch, inner=InnerLoopConfig(), initial_fast_weights=fast)
    result.loss.backward()
    assert all(t.grad is None and not t.requires_grad for ws in fast.values() for t in ws.values())
    assert not any("fast" in n for n, _ in model.named_parameters())
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("inner", [None, InnerLoopConfig(steps=0)])
def test_bilevel_off_is_exactly_standard_sft(inner):
    plain, model, slots = build()
    batch = inputs()
    tokens, labels, mask, pos = batch
    result = step(model, slots, batch, inner=inner)
    (result.loss / result.num_tokens).backward()
    logits = plain(tokens, mask=mask, input_pos=pos)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    loss.backward()
    torch.testing.assert_close((result.loss / result.num_tokens), loss, atol=1e-6, rtol=1e-6)
    for (name, p), (ref_name, ref) in zip(model.named_parameters(), plain.named_parameters()):
        assert name == f"decoder.{ref_name}"
        torch.testing.assert_close(p.grad, ref.grad, atol=1e-6, rtol=1e-6, msg=name)
    assert result.fast_weight_delta_norm.item() == 0 and result.skipped_updates.item() == 0


class NaNOnFirstCall(nn.Module):
    """Wraps the final norm; its first call returns NaN (a non-finite inner loss)."""

    def __init__(self, norm):
        super().__init__()
        self.norm, self.calls = norm, 0

    def forward(self, x):
        self.calls += 1
        out = self.norm(x)
        return out * float("nan") if self.calls == 1 else out


def test_non_finite_inner_loss_skips_that_update_only():
    fast_cfg = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)
    plain, model, slots = build(fast_cfg=fast_cfg)
    model.decoder.norm = NaNOnFirstCall(model.decoder.norm)
    batch = inputs()
    tokens, labels, mask, pos = batch
    fast = nonzero_fast_weights(slots, 3)
    result = step(
        model,
        slots,
        batch,
        inner=InnerLoopConfig(steps=2),
        initial_fast_weights=fast,
    )
    assert result.skipped_updates.item() == 1
    assert torch.isnan(result.inner_losses[0]) and torch.isfinite(result.inner_losses[1:]).all()
    # The one update that ran is the reference's first step.
    ref_loss, ref_losses, _, _, _ = reference_bilevel(
        plain, fast, fast_cfg, InnerLoopConfig(steps=1), tokens, labels, mask, pos
    )
    torch.testing.assert_close(result.inner_losses[1:].tolist(), ref_losses, atol=1e-5, rtol=1e-5)


def test_micro_batch_without_response_tokens_keeps_initial_fast_weights():
    _, model, slots = build()
    tokens, labels, mask, pos = inputs()
    batch = (tokens, torch.full_like(labels, IGNORE_INDEX), mask, pos)
    result = step(
        model,
        slots,
        batch,
        inner=InnerLoopConfig(),
        generator=torch.Generator().manual_seed(0),
    )
    result.loss.backward()
    assert result.num_tokens.item() == 0 and result.loss.item() == 0.0
    assert result.fast_weight_delta_norm.item() == 0 and result.skipped_updates.item() == 0


def test_trunk_layers_run_once_per_micro_batch():
    _, model, slots = build(fast_cfg=FastWeightConfig(layer_fraction=0.5))
    calls = {i: 0 for i in range(len(model.decoder.layers))}
    for i, layer in enumerate(model.decoder.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    batch = inputs()
    step(
        model,
        slots,
        batch,
        inner=InnerLoopConfig(steps=2),
        generator=torch.Generator().manual_seed(0),
    )
    assert calls == {0: 1, 1: 1, 2: 3, 3: 3}


@pytest.mark.parametrize("kwargs", [{"steps": -1}, {"lr": float("nan")}, {"grad_clip": 0.0}])
def test_bad_inner_config_is_rejected(kwargs):
    with pytest.raises(ValueError, match="inner"):
        InnerLoopConfig(**kwargs)


def test_missing_fast_weight_source_is_rejected():
    _, model, slots = build()
    batch = inputs()
    with pytest.raises(ValueError, match="generator"):
        step(model, slots, batch, inner=InnerLoopConfig())
