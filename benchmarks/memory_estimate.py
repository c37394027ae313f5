"""Peak memory of one training step, estimated without a GPU: the real step on fake tensors.

The model of a preset is built under ``FakeTensorMode`` (tensors with shapes and
dtypes, no storage) and one training step of the recipe (mask, :func:`bilevel_step`,
outer backward, AdamW step) runs on it; :class:`SegmentTracker`, built on the
dispatch-mode storage counter the CPU benchmarks measure with
(:class:`benchmarks.memory.TensorMemoryTracker`), follows every storage the step
creates and frees and reports the peak of each segment of the step. Nothing is
allocated, and the step runs on three reduced models whose results are extrapolated
to the preset's depth (:func:`estimate_step`), so a 72B model at 1M tokens is
estimated on a laptop. (torch's ``MemTracker`` from ``torch.distributed._tools`` does
the same counting, but its module tracker's hooks change what the bilevel step keeps
alive: measured when this was built, on the CPU preset at 1K tokens, 78 MiB of peak
growth under it, 55 MiB without it; its Standard SFT figure equals ours to 0.02%.)
The host-side inputs (tokens, labels, layout) are real and enter as fake-tensor
*constants*, so the data-dependent operations of the step (selecting response tokens,
counting each document's tokens) run on their real values.

What is modelled and how (``attention="flex"``, the GPU path):

- FlexAttention with a ``BlockMask``: its compiled kernel keeps the output and the
  log-sum-exp, as SDPA's fused kernels do, so attention runs as causal SDPA (same
  tensors kept, no ``[s, s]`` scores), and the BlockMask's own tensors are allocated at
  their shapes (:func:`fake_block_mask_tensors`, checked against a real one in
  tests/test_memory_estimate.py).
- Activation offloading: saved tensors are moved to the ``meta`` device (host memory
  stands apart from the device's; the copies are not counted).
- One GPU with FSDP2: one shard is the whole model, so parameters, gradients and AdamW
  states are the plain model's. The optimizer is the configs' fused ``torch.optim.AdamW``,
  whose two states are ``zeros_like(parameter)``: bf16 on the GPU presets, not fp32
  (torchtune's recipes keep no fp32 master copy either). By default the step is a
  micro-batch after the first of a gradient accumulation (the configs accumulate 4), so
  the θ-gradients exist before it starts (``StepOptions.accumulated_gradients``). FSDP2's
  unsharded copies of the layers being computed (one or two layers at a time) are not
  modelled: for 7B in bf16 under 1 GiB.

``attention="rows"`` runs the CPU training path (the row-block mask and attention of
focusft/row_block_attention.py, whose CPU flash kernels have fake-tensor kernels; with fake
tensors, whose values are unknown, every block of query rows runs against all keys, where the
real step cuts each block's keys to those its rows may see):
its estimate is compared with the measured peak of a real CPU step (the test and
``python -m benchmarks.max_seq_len --validate``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch._subclasses.fake_tensor as fake_tensor_module
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torchtune.modules import MultiHeadAttention, TransformerDecoder

from benchmarks.data import synthetic_batch
from benchmarks.memory import TensorMemoryTracker
from benchmarks.models import Preset, build_model
from focusft.activation_memory import ActivationOffload, inner_checkpoint_mode
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import RowBlockMask, build_mask, document_positions
from focusft.split_decoder import SplitDecoder
from focusft.tiled_ffn import apply_tiled_ffn

Attention = Literal["flex", "rows"]
BLOCK_SIZE = 128  # FlexAttention's default block, the one focusft.masks.block_mask uses
# Host tensors up to this many elements stay real inside the fake step (1M-token rows).
CONSTANT_NUMEL_LIMIT = 1 << 26


@dataclass(frozen=True)
class StepOptions:
    """One training configuration: the variant and the memory options of the recipe."""

    bilevel: bool = True  # FocuSFT (K inner steps) or Standard SFT
    activation_checkpointing: bool = True
    inner_activation_checkpointing: bool = False
    offload: bool = False
    ffn_tile_tokens: int | None = None
    inner_steps: int = 2
    layer_fraction: float = 0.35
    # A micro-batch after the first of an accumulation (configs/*: gradient_accumulation_steps 4):
    # the θ-gradients are allocated before it starts, as after a recipe's first micro-batch.
    accumulated_gradients: bool = True

    @property
    def name(self) -> str:
        parts = ["FocuSFT" if self.bilevel else "Standard SFT"]
        if self.bilevel and self.inner_activation_checkpointing:
            parts.append("inner AC")
        if self.offload:
            parts.append("offload")
        if self.ffn_tile_tokens:
            parts.append(f"FFN tiles {self.ffn_tile_tokens}")
        return " + ".join(parts)


@dataclass(frozen=True)
class Estimate:
    peak: int  # bytes: the most alive at once on the device over the step (parameters included)
    before: int  # bytes alive before the step: parameters and optimizer state

    @property
    def growth(self) -> int:
        return self.peak - self.before


def fake_block_mask_tensors(batch: int, seq_len: int, block: int = BLOCK_SIZE) -> list[torch.Tensor]:
    """Tensors a ``BlockMask`` of ``[batch, 1, seq_len, seq_len]`` holds: per block row/column counts and indices.

    ``create_block_mask`` keeps, for the key/value direction and its transpose for the
    backward pass, the partial and the full blocks: four ``[b, 1, n]`` counts and four
    ``[b, 1, n, n]`` index tables of int32, ``n = ceil(seq_len / block)``.
    """
    n = -(-seq_len // block)
    counts = [torch.empty(batch, 1, n, dtype=torch.int32) for _ in range(4)]
    indices = [torch.empty(batch, 1, n, n, dtype=torch.int32) for _ in range(4)]
    return counts + indices


@contextlib.contextmanager
def _large_constants() -> Iterator[None]:
    previous = fake_tensor_module.CONSTANT_NUMEL_LIMIT
    fake_tensor_module.CONSTANT_NUMEL_LIMIT = CONSTANT_NUMEL_LIMIT
    try:
        yield
    finally:
        fake_tensor_module.CONSTANT_NUMEL_LIMIT = previous


def _kernel_attention(q, k, v, mask=None, dropout_p=0.0, is_causal=False):
    """Stands in for FlexAttention's compiled kernel: keeps the output and log-sum-exp only."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _offload_to_meta() -> contextlib.AbstractContextManager:
    def pack(tensor: torch.Tensor):
        return tensor.device, tensor.to("meta")

    def unpack(packed) -> torch.Tensor:
        device, tensor = packed
        return torch.empty_like(tensor, device=device)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def layer_split(preset: Preset, layer_fraction: float) -> tuple[int, int]:
    """``(trunk layers, adapted layers)`` of the preset's full model (``FastWeightConfig.first_adapted_layer``)."""
    num_layers = len(build_model(preset, "meta", torch.bfloat16).layers)
    first = FastWeightConfig(layer_fraction=layer_fraction).first_adapted_layer(num_layers)
    return first, num_layers - first


# The reduced models a scaled estimate runs: (trunk layers, adapted layers). Three adapted layers
# in the base, so that every reduced model has the two adapted layers unlike the others: the lowest
# adapted layer of an inner pass sends no gradient to its input (the trunk's output is not
# differentiated there), so its backward is lighter; the last layer runs its FFN on the response
# positions only (focusft/split_decoder.py). The layers added then are middle layers, and so is the
# layer whose backward holds a pass's peak in every reduced model. From a base without a middle
# layer, the step up would count the middle layer's larger backward once per extra layer (7B, 16K:
# FocuSFT 73.7 GiB scaled from (1, 2) against 66.0 from (1, 3) and from the whole 28 layers).
# The lowest trunk layer is like the others: the embedding's gradient needs its input's gradient.
BASE, MORE_TRUNK, MORE_ADAPTED = (1, 3), (2, 3), (1, 4)


def estimate_step(
    preset: Preset,
    seq_len: int,
    options: StepOptions,
    attention: Attention = "flex",
    seed: int = 0,
    scaled: bool = True,
) -> Estimate:
    """Peak memory of one training step of ``options`` at ``seq_len`` tokens (batch 1), in bytes, on fake tensors.

    ``scaled`` (default) runs the step on three reduced models (:data:`BASE`: 1 trunk + 3
    adapted layers, one more trunk layer, one more adapted layer) and extrapolates to the
    preset's layer counts: between the lowest layer of each kind and the last the layers are identical, so
    every quantity that can be the peak (the bytes alive before the step, the peak of each
    segment of the step, see :class:`SegmentTracker`) grows by a fixed amount per layer of
    each kind, and the estimate is the largest extrapolated segment peak. Its cost no longer
    grows with the depth (72B: 80 layers); tests/test_memory_estimate.py checks it equals the
    full model's estimate on the CPU preset in fp32 and bf16. A model with fewer layers of a
    kind than :data:`BASE` is estimated whole.
    """
    trunk, adapted = layer_split(preset, options.layer_fraction)
    if not scaled or trunk < BASE[0] or adapted < BASE[1]:
        before, segments = _step_memory(preset, seq_len, options, attention, seed, fake_tensors=True)
        return Estimate(peak=max(peak for _, peak in segments), before=before)
    runs = {
        layers: _step_memory(preset, seq_len, options, attention, seed, fake_tensors=True, layers=layers)
        for layers in (BASE, MORE_TRUNK, MORE_ADAPTED)
    }
    names = {layers: [name for name, _ in segments] for layers, (_, segments) in runs.items()}
    if len({tuple(n) for n in names.values()}) != 1:
        raise RuntimeError(f"FocuSFT estimate error: the reduced models' steps differ in their segments: {names}")

    def scale(value: dict[tuple[int, int], int]) -> int:
        per_trunk = value[MORE_TRUNK] - value[BASE]
        per_adapted = value[MORE_ADAPTED] - value[BASE]
        return value[BASE] + (trunk - BASE[0]) * per_trunk + (adapted - BASE[1]) * per_adapted

    before = scale({layers: run[0] for layers, run in runs.items()})
    peaks = [scale({layers: run[1][i][1] for layers, run in runs.items()}) for i in range(len(names[BASE]))]
    return Estimate(peak=max(peaks), before=before)


def measure_step(preset: Preset, seq_len: int, options: StepOptions, seed: int = 0) -> Estimate:
    """The same step on real CPU tensors (row-block mask), measured: what :func:`estimate_step` is checked against."""
    if preset.device != "cpu" or options.offload:
        raise ValueError("measure_step runs CPU presets without offloading (the estimate's reference).")
    before, segments = _step_memory(preset, seq_len, options, "rows", seed, fake_tensors=False)
    return Estimate(peak=max(peak for _, peak in segments), before=before)


class SegmentTracker(TensorMemoryTracker):
    """:class:`TensorMemoryTracker` that also keeps the peak of each segment of the step, between marks.

    Segments: each call of the model (trunk; each head pass, an inner pass with its own
    backward), the outer backward through the head, the rest of the backward (trunk,
    embeddings), the optimizer step. Within one, each layer adds the same bytes, so its
    peak is affine in the number of layers of each kind (what :func:`estimate_step` scales).
    """

    def __init__(self, base: int) -> None:
        super().__init__()
        self.base = base  # bytes alive before the block that the tracker does not see (parameters, state)
        self.segments: list[tuple[str, int]] = []
        self._name = "start"

    def mark(self, name: str) -> None:
        self.segments.append((self._name, self.base + self.peak))
        self._name, self.peak = name, self.live


def _reduced(decoder: TransformerDecoder, layers: tuple[int, int] | None, layer_fraction: float):
    """The decoder with ``layers = (trunk, adapted)`` of its layers kept, and the fast-weight config adapting them."""
    if layers is None:
        return decoder, FastWeightConfig(layer_fraction=layer_fraction)
    trunk, adapted = layers
    full = list(decoder.layers)
    decoder.layers = nn.ModuleList(full[:trunk] + full[len(full) - adapted :])
    # first_adapted_layer = int(n * (1 - f)): half a layer of margin keeps float rounding off ``trunk``.
    config = FastWeightConfig(layer_fraction=(adapted - 0.5) / (trunk + adapted))
    assert config.first_adapted_layer(trunk + adapted) == trunk
    return decoder, config


def _step_memory(
    preset: Preset,
    seq_len: int,
    options: StepOptions,
    attention: Attention,
    seed: int,
    fake_tensors: bool,
    layers: tuple[int, int] | None = None,
) -> tuple[int, list[tuple[str, int]]]:
    """Bytes alive before the step, and ``(segment, peak bytes)`` of each segment of one training step."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[preset.dtype]
    tokens, labels, layout = synthetic_batch(seq_len, preset.vocab_size, seed=seed, device="cpu")
    mode = FakeTensorMode() if fake_tensors else None
    with _large_constants() if mode else contextlib.nullcontext(), mode or contextlib.nullcontext():

        def fake(t: torch.Tensor) -> torch.Tensor:
            return mode.fake_tensor_converter.from_real_tensor(mode, t, make_constant=True) if mode else t

        tokens, labels = fake(tokens), fake(labels)
        layout = type(layout)(**{name: fake(getattr(layout, name)) for name in ("context", "doc", "valid")})
        input_pos = document_positions(layout.doc)
        decoder, fast_config = _reduced(build_model(preset, "cpu", dtype, seed=seed), layers, options.layer_fraction)
        slots = attach_fast_weight_slots(decoder, fast_config)
        apply_tiled_ffn(decoder, options.ffn_tile_tokens)
        if attention == "flex":
            for module in decoder.modules():
                if isinstance(module, MultiHeadAttention):
                    module._attention_call = _kernel_attention
        offload = ActivationOffload("cpu", factory=_offload_to_meta) if options.offload else None
        model = SplitDecoder(
            decoder,
            slots,
            options.activation_checkpointing,
            inner_checkpoint_mode(options.activation_checkpointing, options.inner_activation_checkpointing),
            offload,
        )
        # The recipes' optimizer (configs/*: fused AdamW): its state is zeros_like(parameter), the
        # parameters' dtype (bf16 on the GPU presets), plus a one-element step count each.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=True)
        params = list(model.parameters())
        for p in params:  # the state of a previous step, made without running one
            p.grad = torch.zeros_like(p)
        optimizer.step()
        if not options.accumulated_gradients:
            optimizer.zero_grad(set_to_none=True)
        before = sum(
            t.numel() * t.element_size()
            for p in params
            for t in (p, p.grad, *optimizer.state[p].values())
            if t is not None
        )
        inner = InnerLoopConfig(steps=options.inner_steps) if options.bilevel else None
        attention_mode = "bidir_context" if options.bilevel else "causal"
        tracker = SegmentTracker(before)
        calls = iter(range(1 << 30))

        def mark_call(module, args) -> None:
            tracker.mark(f"{args[0]} {next(calls)}")

        def mark_call_end(module, args, output: torch.Tensor) -> None:
            tracker.mark(f"after {args[0]} {next(calls)}")  # an inner pass's backward follows its head call
            if args[0] == "trunk" and output.requires_grad:
                output.register_hook(lambda grad: tracker.mark("backward through the trunk"))

        hooks = [model.register_forward_pre_hook(mark_call), model.register_forward_hook(mark_call_end)]
        with tracker:
            if attention == "flex":
                block_mask = fake_block_mask_tensors(*layout.shape)
                mask = None
            else:
                block_mask, mask = None, build_mask(layout, attention_mode, "rows", dtype=dtype)
                if mode is not None and isinstance(mask, RowBlockMask):  # fake tensors: no values to bound keys
                    mask = RowBlockMask(layout, attention_mode, key_ranges=False)
            result = bilevel_step(
                model,
                slots,
                tokens,
                labels,
                mask=mask,
                input_pos=input_pos,
                inner=inner,
                initial_fast_weights=slots.init([seed]) if inner else None,
            )
            tracker.mark("backward through the head")
            (result.loss / result.num_tokens.clamp(min=1)).backward()
            del result, block_mask, mask
            tracker.mark("optimizer step")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.mark("end")
        for hook in hooks:
            hook.remove()
    return before, tracker.segments
