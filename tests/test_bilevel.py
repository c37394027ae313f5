"""The bilevel step against an independent implementation with LoRA as ordinary modules, document by document."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from focusft import documents as documents_module
from focusft import split_decoder
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.documents import Documents
from focusft.fast_weights import FFN_PROJECTIONS, FastWeightConfig, attach_fast_weight_slots
from focusft.masks import TokenLayout, dense_mask, document_positions
from focusft.split_decoder import SplitDecoder, add_layer_parts
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import IGNORE_INDEX, brute_force_documents, documents_layout, random_batch, shifted_labels
from tests.tolerances import fp32_sum_error


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
    """docs/DESIGN.md section 1 written out directly on the plain decoder's full forward, for one φ."""
    model = copy.deepcopy(model)
    lora = {}
    for layer_index, weights in fast.items():
        mlp = model.layers[layer_index].mlp
        for name in fast_cfg.target_modules:
            proj = FFN_PROJECTIONS[name]
            module = ReferenceLoRALinear(
                getattr(mlp, proj), weights[f"mlp.{proj}.fast_a"], weights[f"mlp.{proj}.fast_b"], fast_cfg.scale
            )
            setattr(mlp, proj, module)
            lora[(layer_index, f"mlp.{proj}.fast_a")] = module.lora_a.weight
            lora[(layer_index, f"mlp.{proj}.fast_b")] = module.lora_b.weight
    params = list(lora.values())
    initial = [p.detach().clone() for p in params]

    def loss_fn():
        logits = model(tokens, mask=mask, input_pos=pos)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)

    losses, clipped = [], 0
    for _ in range(inner.steps):
        loss = loss_fn()
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                norm = g.norm()
                if norm > inner.grad_clip:
                    g = g * inner.grad_clip / (norm + 1e-12)
                    clipped += 1
                p -= inner.lr * g
    for p in params:
        p.requires_grad_(False)
    outer = loss_fn()
    outer.backward()
    losses.append(outer.item())
    delta = torch.cat([(p - p0).flatten() for p, p0 in zip(params, initial)]).norm()
    base_grads = {n.replace(".base.", "."): p.grad for n, p in model.named_parameters() if p.requires_grad}
    adapted = {key: p.detach() for key, p in lora.items()}
    return outer.item(), losses, base_grads, delta.item(), clipped, adapted


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


def nonzero_fast_weights(slots, seeds):
    """φ_0 stacked per seed, with B ≠ 0 too, so that A gets a gradient from the first step."""
    fast = slots.init(seeds)
    g = torch.Generator().manual_seed(seeds[0] + 1)
    return {
        layer: {n: (t if n.endswith("fast_a") else 0.05 * torch.randn(t.shape, generator=g)) for n, t in ws.items()}
        for layer, ws in fast.items()
    }


def document(fast, d):
    """Document ``d``'s φ out of stacked fast weights."""
    return {layer: {n: t[d] for n, t in ws.items()} for layer, ws in fast.items()}


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
@pytest.mark.parametrize("activation_checkpointing", [False, True])
@pytest.mark.parametrize("zero_b", [True, False])
@pytest.mark.parametrize("grad_clip", [1.0, 0.002])
def test_one_shared_fast_weight_set_matches_reference_implementation(mode, activation_checkpointing, zero_b, grad_clip):
    """``fast_weight_scope: micro_batch`` (the ablation): one φ for the whole micro-batch."""
    fast_cfg = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)
    inner = InnerLoopConfig(steps=2, lr=1.0, grad_clip=grad_clip)
    plain, model, slots = build(fast_cfg=fast_cfg, activation_checkpointing=activation_checkpointing)
    batch = inputs(mode)
    tokens, labels, mask, pos = batch
    fast = slots.init([3]) if zero_b else nonzero_fast_weights(slots, [3])

    result = step(model, slots, batch, inner=inner, initial_fast_weights=fast)
    (result.loss / result.num_tokens).backward()
    ref_loss, ref_losses, ref_grads, ref_delta, clipped, _ = reference_bilevel(
        plain, document(fast, 0), fast_cfg, inner, tokens, labels, mask, pos
    )
    assert (clipped > 0) == (grad_clip < 1.0)  # both regimes of the clip are exercised

    assert result.num_tokens.item() == (labels != IGNORE_INDEX).sum().item() > 0
    torch.testing.assert_close((result.loss / result.num_tokens).item(), ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.inner_losses.tolist(), ref_losses, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.delta_norms.tolist(), [ref_delta], atol=1e-5, rtol=1e-5)
    grads = {n.removeprefix("decoder."): p.grad for n, p in model.named_parameters()}
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=1e-5, msg=name)
    assert result.skipped_updates.item() == 0


def test_inner_steps_lower_the_inner_loss():
    _, model, slots = build()
    batch = inputs()
    result = step(model, slots, batch, inner=InnerLoopConfig(), initial_fast_weights=slots.init([0]))
    losses = result.inner_losses.tolist()
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]
    assert result.delta_norms.item() > 0


def test_fast_weights_get_no_outer_gradient():
    _, model, slots = build()
    batch = inputs()
    fast = slots.init([0])
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
    # Means of the same fp32 token losses summed in other orders; gradients at the fp32 house tolerance.
    error = fp32_sum_error(result.num_tokens.item())
    torch.testing.assert_close((result.loss / result.num_tokens), loss, atol=0, rtol=error)
    for (name, p), (ref_name, ref) in zip(model.named_parameters(), plain.named_parameters()):
        assert name == f"decoder.{ref_name}"
        torch.testing.assert_close(p.grad, ref.grad, atol=1e-5, rtol=1e-5, msg=name)
    assert result.delta_norms.item() == 0 and result.skipped_updates.item() == 0


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
    fast = nonzero_fast_weights(slots, [3])
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
    ref_loss, ref_losses, *_ = reference_bilevel(
        plain, document(fast, 0), fast_cfg, InnerLoopConfig(steps=1), tokens, labels, mask, pos
    )
    torch.testing.assert_close(result.inner_losses[1:].tolist(), ref_losses, atol=1e-5, rtol=1e-5)


def test_micro_batch_without_response_tokens_keeps_initial_fast_weights():
    _, model, slots = build()
    tokens, labels, mask, pos = inputs()
    batch = (tokens, torch.full_like(labels, IGNORE_INDEX), mask, pos)
    result = step(model, slots, batch, inner=InnerLoopConfig(), initial_fast_weights=slots.init([0]))
    result.loss.backward()
    assert result.num_tokens.item() == 0 and result.loss.item() == 0.0
    assert result.delta_norms.item() == 0 and result.skipped_updates.item() == 0


def test_trunk_runs_once_per_micro_batch():
    """Everything below the first fast weight (layers 0-1 and layer 2's attention) runs once; the rest K+1 times."""
    _, model, slots = build(fast_cfg=FastWeightConfig(layer_fraction=0.5))
    calls = {}
    for i, layer in enumerate(model.decoder.layers):
        for name, module in (("attn", layer.attn), ("mlp", layer.mlp)):
            calls[i, name] = 0
            module.register_forward_hook(lambda *_, key=(i, name): calls.__setitem__(key, calls[key] + 1))
    batch = inputs()
    step(model, slots, batch, inner=InnerLoopConfig(steps=2), initial_fast_weights=slots.init([0]))
    once = {(i, name): 1 for i in (0, 1) for name in ("attn", "mlp")} | {(2, "attn"): 1}
    assert calls == once | {(2, "mlp"): 3, (3, "attn"): 3, (3, "mlp"): 3}


@pytest.mark.parametrize("kwargs", [{"steps": -1}, {"lr": float("nan")}, {"grad_clip": 0.0}])
def test_bad_inner_config_is_rejected(kwargs):
    with pytest.raises(ValueError, match="inner"):
        InnerLoopConfig(**kwargs)


def test_missing_fast_weight_source_is_rejected():
    _, model, slots = build()
    batch = inputs()
    with pytest.raises(ValueError, match="initial_fast_weights"):
        step(model, slots, batch, inner=InnerLoopConfig())
    with pytest.raises(ValueError, match="2 document"):
        step(model, slots, batch, inner=InnerLoopConfig(), initial_fast_weights=slots.init([0, 1]))


FAST = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)


def packed_inputs(rows, width, seed=0):
    """Tokens, shifted labels and layout of rows of documents of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    layout = documents_layout(rows, width, generator)
    tokens = torch.randint(0, 500, layout.shape, generator=generator)
    return tokens, shifted_labels(tokens, layout), layout


def alone(tokens, labels, layout, d, mode):
    """Document ``d`` as a micro-batch of its own: its tokens, labels, mask and positions."""
    where = brute_force_documents(layout) == d
    context = layout.context[where][None]
    return (
        tokens[where][None],
        labels[where][None],
        dense_mask(TokenLayout.single_document(context), mode),
        torch.arange(context.shape[1])[None],
    )


def packed_step(model, slots, tokens, labels, layout, mode, inner, fast, mask=None):
    """``bilevel_step`` on ``layout``'s documents, with its bool dense mask unless ``mask`` is given."""
    documents = Documents.from_layout(layout)
    return bilevel_step(
        model,
        slots,
        tokens,
        labels,
        mask=dense_mask(layout, mode) if mask is None else mask,
        input_pos=document_positions(layout.doc),
        inner=inner,
        documents=documents,
        initial_fast_weights=fast,
    )


def assert_document_matches_reference(result, d, ref_losses, adapted, steps=None):
    """Document ``d``'s inner losses (the last ``steps + 1``) and adapted φ equal the reference's."""
    got = result.document_losses[:, d] if steps is None else result.document_losses[-steps - 1 :, d]
    torch.testing.assert_close(got.tolist(), ref_losses, atol=1e-5, rtol=1e-5)
    for (layer, name), value in adapted.items():
        torch.testing.assert_close(result.fast_weights[layer][name][d], value, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
@pytest.mark.parametrize("rows", [[[30, 12, 9]], [[20], [13]]], ids=["packed_row", "padded_batch"])
@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_each_document_trains_exactly_as_if_it_were_alone(mode, rows, activation_checkpointing, monkeypatch):
    """Per document: inner losses, adapted φ, outer loss and θ-gradient equal the reference run on it alone."""
    monkeypatch.setattr(documents_module, "CHUNK_TOKENS", 8)  # long documents span several chunks
    inner = InnerLoopConfig(steps=2, lr=1.0, grad_clip=0.05)  # the clip is active
    plain, model, slots = build(fast_cfg=FAST, activation_checkpointing=activation_checkpointing)
    tokens, labels, layout = packed_inputs(rows, 56 if len(rows) == 1 else 20)
    count = sum(len(r) for r in rows)
    assert Documents.from_layout(layout).routing == ("chunks" if len(rows) == 1 else "rows")
    fast = nonzero_fast_weights(slots, list(range(10, 10 + count)))

    result = packed_step(model, slots, tokens, labels, layout, mode, inner, fast)
    total = result.num_tokens.item()
    (result.loss / total).backward()

    expected_loss, expected_grads = 0.0, {}
    for d in range(count):
        t, lab, m, p = alone(tokens, labels, layout, d, mode)
        n = (lab != IGNORE_INDEX).sum().item()
        ref_loss, ref_losses, ref_grads, ref_delta, _, adapted = reference_bilevel(
            plain, document(fast, d), FAST, inner, t, lab, m, p
        )
        assert result.document_tokens[d].item() == n > 0
        assert_document_matches_reference(result, d, ref_losses, adapted)
        torch.testing.assert_close(result.delta_norms[d].item(), ref_delta, atol=1e-5, rtol=1e-5)
        expected_loss += n * ref_loss / total
        for name, grad in ref_grads.items():
            expected_grads[name] = expected_grads.get(name, 0) + grad * n / total
    assert result.skipped_updates.item() == 0
    torch.testing.assert_close(result.loss.item() / total, expected_loss, atol=1e-5, rtol=1e-5)
    grads = {n.removeprefix("decoder."): p.grad for n, p in model.named_parameters()}
    assert grads.keys() == expected_grads.keys()
    for name, expected in expected_grads.items():
        torch.testing.assert_close(grads[name], expected, atol=1e-5, rtol=1e-5, msg=name)


def test_a_document_without_response_tokens_keeps_its_initial_fast_weights_and_adds_nothing():
    inner = InnerLoopConfig(steps=2)
    plain, model, slots = build(fast_cfg=FAST)
    tokens, _, layout = packed_inputs([[20, 10, 14]], 48)
    layout.context[brute_force_documents(layout) == 1] = True  # document 1: context only
    labels = shifted_labels(tokens, layout)
    fast = nonzero_fast_weights(slots, [1, 2, 3])

    result = packed_step(model, slots, tokens, labels, layout, "bidir_context", inner, fast)
    assert result.document_tokens[1].item() == 0 and result.delta_norms[1].item() == 0
    assert result.skipped_updates.item() == 0
    for layer, ws in fast.items():
        for name, t in ws.items():
            assert torch.equal(result.fast_weights[layer][name][1], t[1])
    expected = 0.0
    for d in (0, 2):
        t, lab, m, p = alone(tokens, labels, layout, d, "bidir_context")
        ref_loss, ref_losses, *_, adapted = reference_bilevel(plain, document(fast, d), FAST, inner, t, lab, m, p)
        assert_document_matches_reference(result, d, ref_losses, adapted)
        expected += ref_loss * (lab != IGNORE_INDEX).sum().item()
    torch.testing.assert_close(result.loss.item(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        result.inner_losses[-1].item(), expected / result.num_tokens.item(), atol=1e-5, rtol=1e-5
    )


def test_a_non_finite_document_loss_skips_only_that_documents_update(monkeypatch):
    inner = InnerLoopConfig(steps=2)
    plain, model, slots = build(fast_cfg=FAST)
    tokens, labels, layout = packed_inputs([[24, 14, 12]], 56)
    poisoned = Documents.from_layout(layout).token_document[labels != IGNORE_INDEX] == 1
    calls = []
    original = split_decoder.response_token_losses

    def nan_for_document_1_on_first_call(decoder, hidden, labels):
        calls.append(1)
        losses = original(decoder, hidden, labels)
        return losses + torch.where(poisoned, float("nan"), 0.0) if len(calls) == 1 else losses

    monkeypatch.setattr(split_decoder, "response_token_losses", nan_for_document_1_on_first_call)
    fast = nonzero_fast_weights(slots, [1, 2, 3])
    result = packed_step(model, slots, tokens, labels, layout, "bidir_context", inner, fast)

    assert result.skipped_updates.item() == 1
    assert torch.isnan(result.document_losses[0, 1]) and torch.isfinite(result.document_losses[0, [0, 2]]).all()
    for d, steps in ((0, 2), (1, 1), (2, 2)):  # document 1 kept φ_0 through step 0, then took one step
        t, lab, m, p = alone(tokens, labels, layout, d, "bidir_context")
        _, ref_losses, *_, adapted = reference_bilevel(
            plain, document(fast, d), FAST, InnerLoopConfig(steps=steps), t, lab, m, p
        )
        assert_document_matches_reference(result, d, ref_losses, adapted, steps=steps)


def test_a_layers_attention_then_ffn_part_is_the_layer():
    """The two parts the split runs separately compose to the layer, exactly; kept positions equal its rows."""
    decoder = seeded_tiny_qwen2_5(0)
    layer, x = decoder.layers[1], torch.randn(2, 12, decoder.tok_embeddings.embedding_dim)
    whole = layer(x)
    keys = list(layer.state_dict())
    assert add_layer_parts(layer) is add_layer_parts(layer) and list(layer.state_dict()) == keys
    torch.testing.assert_close(layer(layer(x, part="attention"), part="ffn"), whole, atol=0, rtol=0)
    torch.testing.assert_close(layer(x), whole, atol=0, rtol=0)
    kept = torch.tensor([0, 5, 11, 13, 20])  # flat positions over [2, 12]
    for got in (layer(x, outputs_at=kept), layer(layer(x, part="attention"), part="ffn", outputs_at=kept)):
        assert got.shape == (1, 5, x.shape[-1])
        torch.testing.assert_close(got[0], whole.flatten(0, 1)[kept])
    with pytest.raises(ValueError, match="layer part"):
        layer(x, part="mlp")
    with pytest.raises(ValueError, match="outputs_at"):
        layer(x, part="attention", outputs_at=kept)
    with pytest.raises(TypeError, match="TransformerSelfAttentionLayer"):
        add_layer_parts(torch.nn.Linear(2, 2))
