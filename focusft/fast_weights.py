"""Fast weights: per-document LoRA pairs on the FFN projections of the top layers.

The pairs are not parameters. Each target projection becomes a
:class:`FastLoRALinear` (or, when it is already an outer LoRA or NF4 projection, that
module with the same slots, :func:`add_fast_weight_slots`) whose ``fast_*`` slots are
non-persistent buffers left at ``None``; :func:`torch.func.functional_call` fills them for one forward. So they
never reach ``state_dict``, the optimizer, a checkpoint or FSDP, and a model
without them filled is exactly the base model.

A slot holds one pair for every token (``A [r, in]``), one pair per row
(``A [b, r, in]``), or one pair per document with the chunk routing of
:class:`focusft.documents.Documents` (``A [D, r, in]`` plus the chunk tensors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torchtune.modules import TransformerDecoder

from focusft.mixins import add_mixin

# Paper (HF) projection names -> torchtune FeedForward attribute names.
FFN_PROJECTIONS: dict[str, str] = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}

FastWeights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FastWeightConfig:
    """Shape of the fast weights (paper Table 5 defaults)."""

    rank: int = 32
    alpha: float = 64.0
    layer_fraction: float = 0.35
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"fast-weight rank must be an integer >= 1, got {self.rank!r}.")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"fast-weight alpha must be a finite number > 0, got {self.alpha!r}.")
        if not 0.0 < self.layer_fraction <= 1.0:
            raise ValueError(f"layer_fraction must be in (0, 1], got {self.layer_fraction!r}.")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules:
            raise ValueError("target_modules must name at least one projection.")
        unknown = [m for m in self.target_modules if m not in FFN_PROJECTIONS]
        if unknown:
            raise ValueError(f"Unknown target module(s) {unknown}; expected a subset of {list(FFN_PROJECTIONS)}.")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules has duplicates: {list(self.target_modules)}.")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def first_adapted_layer(self, num_layers: int) -> int:
        """Index of the lowest adapted layer: layers ``start .. L-1`` carry fast weights."""
        return int(num_layers * (1 - self.layer_fraction))


class ChunkedLowRank(torch.autograd.Function):
    """``y + scale · (x Aᵀ) Bᵀ`` with each token's own document's ``A [D, r, in]`` and ``B [D, out, r]``.

    Tokens are gathered in padded chunks (``chunk_tokens [n, c]`` flat positions, padded
    with ``N``; ``chunk_document [n]``) and multiplied with two bmms. Only ``x`` (which
    the base projection keeps anyway), the fast weights and the small ``[n, c, r]``
    product are saved: the gathered copies of ``x`` and of ``A``/``B`` are rebuilt in the
    backward pass, so packing costs no activation memory. The delta is added into a copy
    of ``y`` (no separate ``[N, out]`` delta, no scaled copy): padded slots gather the last
    token and add zero to it, since their low-rank rows are zeroed.
    """

    @staticmethod
    def forward(ctx, y, x, a, b, scale, chunk_tokens, chunk_document):
        flat = x.reshape(-1, x.shape[-1])
        positions = chunk_tokens.clamp(max=flat.shape[0] - 1)
        used = (chunk_tokens < flat.shape[0]).unsqueeze(-1)
        low = torch.bmm(flat[positions], a[chunk_document].mT) * used
        out = torch.bmm(low, b[chunk_document].mT)
        result = y.reshape(-1, y.shape[-1]).index_add(0, positions.flatten(), out.flatten(0, 1), alpha=scale)
        ctx.save_for_backward(x, a, b, chunk_tokens, chunk_document, low)
        ctx.scale = scale
        return result.view_as(y)

    @staticmethod
    def backward(ctx, grad_result):
        x, a, b, chunk_tokens, chunk_document, low = ctx.saved_tensors
        flat = x.reshape(-1, x.shape[-1])
        positions = chunk_tokens.clamp(max=flat.shape[0] - 1)
        used = (chunk_tokens < flat.shape[0]).unsqueeze(-1)
        grad_out = grad_result.reshape(-1, grad_result.shape[-1])[positions] * (used * ctx.scale)
        a_chunks, b_chunks = a[chunk_document], b[chunk_document]
        grad_low = torch.bmm(grad_out, b_chunks)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_gathered = torch.bmm(grad_low, a_chunks)
            grad_x = flat.new_zeros(flat.shape[0] + 1, flat.shape[1])
            grad_x = grad_x.index_add_(0, chunk_tokens.flatten(), grad_gathered.flatten(0, 1))[:-1].view_as(x)
        if ctx.needs_input_grad[2]:
            grad_a_chunks = torch.bmm(grad_low.mT, flat[positions])
            grad_a = torch.zeros_like(a).index_add_(0, chunk_document, grad_a_chunks)
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros_like(b).index_add_(0, chunk_document, torch.bmm(grad_out.mT, low))
        return grad_result, grad_x, grad_a, grad_b, None, None, None


class FastLoRALinear(nn.Linear):
    """``nn.Linear`` plus an optional functional low-rank delta ``scale * (x Aᵀ) Bᵀ``.

    The base weight keeps its parameter name, so checkpoints and FSDP see a plain
    linear layer. The fast weights are kept in fp32 and cast to the activation dtype
    in the forward pass, so bf16 training still updates them in full precision.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, scale: float, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.scale = scale
        for slot in FAST_SLOTS:
            self.register_buffer(slot, None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale: float) -> FastLoRALinear:
        """Wrap ``linear``'s own parameters (no copy)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, scale=scale, device="meta")
        module.weight = linear.weight
        module.bias = linear.bias
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_fast_low_rank(self, x, super().forward(x))


FAST_SLOTS = ("fast_a", "fast_b", "fast_chunk_tokens", "fast_chunk_document")


def add_fast_low_rank(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y + scale · (x Aᵀ) Bᵀ`` with the fast weights in ``module``'s slots; ``y`` when they are empty.

    One fused multiply-add (``addmm``/``baddbmm``/``index_add`` with ``alpha=scale``): the
    result is the only new ``[..., out]`` tensor. A separate delta, its scaled copy and the
    sum would hold three more at once, the FFN's widest activations (docs/DESIGN.md 6b).
    """
    if module.fast_a is None:
        return y
    a, b = module.fast_a.to(x.dtype), module.fast_b.to(x.dtype)
    scale = module.scale
    if a.dim() == 2:  # one pair for every token
        low = F.linear(x, a).reshape(-1, a.shape[0])
        return torch.addmm(y.reshape(-1, y.shape[-1]), low, b.T, alpha=scale).view_as(y)
    if module.fast_chunk_tokens is None:  # one pair per row
        return torch.baddbmm(y, x @ a.mT, b.mT, alpha=scale)
    # one pair per document, tokens routed in chunks
    return ChunkedLowRank.apply(y, x, a, b, scale, module.fast_chunk_tokens, module.fast_chunk_document)


class FastWeightSlotsMixin:
    """Adds the fast-weight slots to any projection module: ``y = proj(x) + scale · (x Aᵀ) Bᵀ``.

    For projections that are not a plain ``nn.Linear`` (torchtune's ``LoRALinear``, its NF4
    ``FrozenNF4Linear``): φ goes on top of whatever the projection computes, base plus outer
    LoRA (docs/DESIGN.md section 3b). :func:`add_fast_weight_slots` gives an existing module
    this behaviour by switching it to a subclass (as ``torch.nn.utils.parametrize`` does), so
    its parameters keep their objects and names for FSDP, the optimizer and checkpoints.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_fast_low_rank(self, x, super().forward(x))


def add_fast_weight_slots(module: nn.Module, scale: float) -> nn.Module:
    """Give ``module`` (in place: :func:`focusft.mixins.add_mixin`) empty fast-weight slots that add φ to its output."""
    if not isinstance(module, (FastLoRALinear, FastWeightSlotsMixin)):
        add_mixin(module, FastWeightSlotsMixin, "WithFastWeights")
        for slot in FAST_SLOTS:
            module.register_buffer(slot, None, persistent=False)
    module.scale = scale
    return module


def projection_features(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` features of an ``nn.Linear`` or of torchtune's ``LoRALinear`` / ``DoRALinear``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if hasattr(module, "in_dim") and hasattr(module, "out_dim"):
        return module.in_dim, module.out_dim
    raise ValueError(f"{type(module).__name__} is not a linear projection that fast weights can adapt.")


@dataclass(frozen=True)
class FastWeightSlots:
    """Where the fast weights of a model go, and how to make a fresh set.

    Names are relative to a transformer layer (``"mlp.w1.fast_a"``) so that each
    layer can be run with :func:`torch.func.functional_call` on its own.
    """

    config: FastWeightConfig
    first_layer: int
    num_layers: int
    shapes: dict[str, tuple[int, int]]  # projection attribute -> (in_features, out_features)

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.num_layers)

    def init(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> dict[int, FastWeights]:
        """Fresh fast weights for one document per seed, stacked ``[D, ...]``.

        A ~ kaiming_uniform(a=√5) (the ``nn.Linear`` default), B = 0. Each document's A
        is drawn on ``device`` from a generator of its own seed, so a seed gives the same
        weights on every device of a kind, whatever other documents share the micro-batch
        (and drawing costs no host-to-device copy).
        """
        device = torch.device(device)
        generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
        weights: dict[int, FastWeights] = {layer: {} for layer in self.layers}
        for layer in self.layers:
            for proj, (in_features, out_features) in self.shapes.items():
                a = torch.empty(len(seeds), self.config.rank, in_features, device=device)
                for document, generator in enumerate(generators):
                    nn.init.kaiming_uniform_(a[document], a=math.sqrt(5), generator=generator)
                weights[layer][f"mlp.{proj}.fast_a"] = a
                weights[layer][f"mlp.{proj}.fast_b"] = torch.zeros(
                    len(seeds), out_features, self.config.rank, device=device
                )
        return weights


def attach_fast_weight_slots(model: TransformerDecoder, config: FastWeightConfig) -> FastWeightSlots:
    """Give the target FFN projections of the top layers fast-weight slots.

    A plain ``nn.Linear`` becomes a :class:`FastLoRALinear`; any other projection (an
    outer ``LoRALinear``, an NF4 base) keeps its class's forward, φ added on top
    (:func:`add_fast_weight_slots`). Call before sharding the model; parameters are shared,
    not copied, and keep their names.
    """
    num_layers = len(model.layers)
    first = config.first_adapted_layer(num_layers)
    shapes: dict[str, tuple[int, int]] = {}
    for layer in model.layers[first:]:
        for name in config.target_modules:
            proj = FFN_PROJECTIONS[name]
            module = getattr(layer.mlp, proj, None)
            try:
                shapes[proj] = projection_features(module)
            except ValueError:
                raise ValueError(f"Layer has no linear FFN projection mlp.{proj} ({name}) to adapt.") from None
            if type(module) is nn.Linear:
                setattr(layer.mlp, proj, FastLoRALinear.from_linear(module, config.scale))
            else:
                add_fast_weight_slots(module, config.scale)
    return FastWeightSlots(config=config, first_layer=first, num_layers=num_layers, shapes=shapes)


def run_layer(layer: nn.Module, h: torch.Tensor, fast: FastWeights | None, **kwargs) -> torch.Tensor:
    """One transformer layer, with ``fast`` filled into its slots for this call only."""
    if fast is None:
        return layer(h, **kwargs)
    return functional_call(layer, fast, (h,), kwargs, strict=False)
