"""Fast-weight slots: where they go, what they leave untouched, what they compute."""

import math

import pytest
import torch
from torch.func import functional_call

from benchmarks.memory import peak_memory_growth
from focusft.fast_weights import FastLoRALinear, FastWeightConfig, attach_fast_weight_slots
from focusft.tiny import seeded_tiny_qwen2_5


def test_slots_go_on_the_top_layers_ffn_only():
    model = seeded_tiny_qwen2_5(0, num_layers=6)
    slots = attach_fast_weight_slots(model, FastWeightConfig(layer_fraction=0.35))
    assert slots.first_layer == int(6 * 0.65) == 3
    for index, layer in enumerate(model.layers):
        for proj in ("w1", "w2", "w3"):
            assert isinstance(getattr(layer.mlp, proj), FastLoRALinear) == (index >= 3)
        assert not any(isinstance(m, FastLoRALinear) for m in layer.attn.modules())


def test_qwen2_5_7b_layer_choice_matches_the_paper():
    assert FastWeightConfig(layer_fraction=0.35).first_adapted_layer(28) == 18  # "top 10 of 28"


def test_target_modules_select_projections():
    model = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(model, FastWeightConfig(target_modules=("down_proj",), layer_fraction=1.0))
    assert set(slots.shapes) == {"w2"}
    assert all(isinstance(layer.mlp.w2, FastLoRALinear) for layer in model.layers)
    assert not any(isinstance(layer.mlp.w1, FastLoRALinear) for layer in model.layers)


def test_slots_leave_state_dict_parameters_and_outputs_unchanged():
    plain = seeded_tiny_qwen2_5(0)
    model = seeded_tiny_qwen2_5(0)
    attach_fast_weight_slots(model, FastWeightConfig())
    assert list(model.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert not any("fast" in n for n in model.state_dict())
    tokens = torch.randint(0, 500, (2, 20))
    torch.testing.assert_close(model(tokens), plain(tokens), atol=0, rtol=0)


def test_initial_fast_weights_leave_the_model_output_unchanged():
    model = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(model, FastWeightConfig())
    fast = slots.init([1])
    flat = {f"layers.{layer}.{name}": t[0] for layer, ws in fast.items() for name, t in ws.items()}
    tokens = torch.randint(0, 500, (2, 20))
    torch.testing.assert_close(functional_call(model, flat, (tokens,), strict=False), model(tokens), atol=0, rtol=0)
    assert set(fast) == set(range(slots.first_layer, 4))
    for ws in fast.values():
        for name, t in ws.items():
            if name.endswith("fast_b"):
                assert not t.any()
            else:
                bound = 1 / math.sqrt(t.shape[2])  # kaiming_uniform(a=√5) on [rank, in]
                assert t.shape[:2] == (1, 32) and t.abs().max() <= bound and t.abs().max() > 0.5 * bound
    assert not any("fast" in n for n in model.state_dict())
    assert all(m.fast_a is None for m in model.modules() if isinstance(m, FastLoRALinear))


def test_initial_fast_weights_are_deterministic_by_seed_whatever_else_is_drawn():
    slots = attach_fast_weight_slots(seeded_tiny_qwen2_5(0), FastWeightConfig())
    a = slots.init([5])
    stacked = slots.init([6, 5, 7])
    c = slots.init([6])
    for layer, ws in a.items():
        for name, t in ws.items():
            assert torch.equal(t[0], stacked[layer][name][1]) and torch.equal(
                c[layer][name][0], stacked[layer][name][0]
            )
    key = (slots.first_layer, "mlp.w1.fast_a")
    assert not torch.equal(a[key[0]][key[1]], c[key[0]][key[1]])


def test_fast_lora_linear_computes_the_adapted_projection():
    linear = torch.nn.Linear(8, 6, bias=True)
    module = FastLoRALinear.from_linear(linear, scale=2.0)
    a, b, x = torch.randn(3, 8), torch.randn(6, 3), torch.randn(5, 8)
    out = functional_call(module, {"fast_a": a, "fast_b": b}, (x,), strict=False)
    torch.testing.assert_close(out, x @ linear.weight.T + linear.bias + 2.0 * (x @ a.T) @ b.T)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_fraction": 0.0}, "layer_fraction"),
        ({"layer_fraction": 1.5}, "layer_fraction"),
        ({"rank": 0}, "rank"),
        ({"alpha": 0.0}, "alpha"),
        ({"target_modules": ("q_proj",)}, "Unknown target module"),
        ({"target_modules": ()}, "at least one"),
    ],
)
def test_bad_fast_weight_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FastWeightConfig(**kwargs)


def _routed_slots(routing: str, g: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fast-weight slots of one routing for ``x [2, 6, 8]``, and the per-token ``A``/``B`` index ``[2, 6]``."""
    shape = {"every token": (), "per row": (2,), "per document": (3,)}[routing]
    slots = {"fast_a": torch.randn(*shape, 3, 8, generator=g), "fast_b": torch.randn(*shape, 256, 3, generator=g)}
    if routing == "every token":
        return slots, torch.full((2, 6), -1)
    if routing == "per row":
        return slots, torch.arange(2)[:, None].expand(2, 6)
    # documents 0 = row 0, 1 = row 1 [0, 2), 2 = row 1 [2, 6); chunks of 4 padded with N = 12
    slots["fast_chunk_tokens"] = torch.tensor([[0, 1, 2, 3], [4, 5, 12, 12], [6, 7, 12, 12], [8, 9, 10, 11]])
    slots["fast_chunk_document"] = torch.tensor([0, 0, 1, 2])
    return slots, torch.tensor([[0] * 6, [1, 1, 2, 2, 2, 2]])


@pytest.mark.parametrize("routing", ["every token", "per row", "per document"])
def test_adapted_projection_values_gradients_and_memory_per_routing(routing):
    """``W x + b + scale · B A x`` token by token with the token's own pair; one fused add, no wide temporaries."""
    g = torch.Generator().manual_seed(0)
    module = FastLoRALinear.from_linear(torch.nn.Linear(8, 256, bias=True), scale=0.5)
    slots, pair = _routed_slots(routing, g)
    x = torch.randn(2, 6, 8, generator=g, requires_grad=True)
    got = functional_call(module, slots, (x,), strict=False)
    rows = []
    for row, t in ((row, t) for row in range(2) for t in range(6)):
        index = () if routing == "every token" else (int(pair[row, t]),)
        a, b = slots["fast_a"][index], slots["fast_b"][index]
        rows.append(module.weight @ x[row, t] + module.bias + 0.5 * (b @ (a @ x[row, t])))
    expected = torch.stack(rows).view(2, 6, 256)
    torch.testing.assert_close(got, expected)
    upstream = torch.randn(got.shape, generator=g)
    torch.testing.assert_close(torch.autograd.grad(got, x, upstream), torch.autograd.grad(expected, x, upstream))

    with torch.no_grad():
        plain = peak_memory_growth(lambda: module(x), torch.device("cpu"))
        adapted = peak_memory_growth(lambda: functional_call(module, slots, (x,), strict=False), torch.device("cpu"))
    output = got.numel() * got.element_size()
    # documents: also the padded chunks' product, [chunks, chunk tokens, out], before it is added in
    chunks = slots["fast_chunk_tokens"].numel() * 256 * got.element_size() if routing == "per document" else 0
    assert plain >= output
    assert adapted - plain <= output + chunks + 1024, (adapted, plain, output)
