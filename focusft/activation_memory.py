"""What a layer keeps for its backward pass: checkpointing (full or selective) and offloading to host memory.

docs/DESIGN.md section 6b. An inner pass of FocuSFT is followed at once by its own
backward, so without checkpointing it keeps every activation of the adapted layers,
while Standard SFT with activation checkpointing keeps one tensor per layer. Three
ways to run a layer (:data:`CheckpointMode`):

- ``none``: keep everything (fastest, most memory).
- ``full``: keep the layer's input, recompute the whole layer in the backward pass.
- ``selective``: keep the input and the attention outputs (out and log-sum-exp: the
  ``O(s²)`` part, dear to recompute), recompute the rest (norms, projections, FFN:
  ``O(s)`` work). torch's selective-checkpoint policies
  (:func:`torch.utils.checkpoint.create_selective_checkpoint_contexts`) do the bookkeeping.

Recomputation replays the same operators on the same inputs, so every mode gives the
same losses and gradients (tests/test_activation_memory.py).

:class:`ActivationOffload` moves what the passes save to host memory:
torchtune's ``OffloadActivations`` on CUDA, :func:`torch.autograd.graph.save_on_cpu`
elsewhere (on a CPU it is a copy; it keeps the path testable there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Literal, get_args

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

CheckpointMode = Literal["none", "selective", "full"]
CHECKPOINT_MODES: tuple[str, ...] = get_args(CheckpointMode)


def _attention_ops() -> frozenset:
    """The attention operators (each SDPA backend, FlexAttention) whose outputs selective checkpointing keeps."""
    names = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
        "_scaled_dot_product_attention_math",
    )
    ops = {getattr(torch.ops.aten, name).default for name in names if hasattr(torch.ops.aten, name)}
    flex = getattr(torch.ops.higher_order, "flex_attention", None)
    if flex is not None:
        ops.add(flex)
    return frozenset(ops)


ATTENTION_OPS = _attention_ops()


def keep_attention_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective-checkpoint policy: keep attention outputs, recompute every other operator."""
    return CheckpointPolicy.MUST_SAVE if op in ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def inner_checkpoint_mode(activation_checkpointing: bool, inner_activation_checkpointing: bool) -> CheckpointMode:
    """The inner passes' mode from the recipe's two switches.

    ``enable_inner_activation_checkpointing`` asks for full recomputation; otherwise the
    inner passes are checkpointed selectively whenever the outer pass is checkpointed
    (memory near Standard SFT's for one FFN forward per adapted layer and inner step),
    and not at all without activation checkpointing.
    """
    if inner_activation_checkpointing:
        return "full"
    return "selective" if activation_checkpointing else "none"


def run_checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, mode: CheckpointMode) -> torch.Tensor:
    """``fn(h)`` keeping what ``mode`` says for the backward pass (plain call when no graph is built)."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"Unknown checkpoint mode {mode!r}; expected one of {CHECKPOINT_MODES}.")
    if mode == "none" or not torch.is_grad_enabled():
        return fn(h)
    if mode == "full":
        return checkpoint(fn, h, use_reentrant=False)
    context_fn = partial(create_selective_checkpoint_contexts, keep_attention_policy)
    return checkpoint(fn, h, use_reentrant=False, context_fn=context_fn)


class ActivationOffload:
    """Context managers that send saved activations to host memory, one per pass.

    torchtune's ``OffloadActivations`` expects one forward then one backward that
    unpacks everything it packed; an inner pass's backward (gradients of φ only) leaves
    some saved tensors unread, and the outer pass's forward straddles the inner loop.
    So each inner pass gets its own instance, and the trunk and the outer head share
    one per micro-batch (:meth:`outer`, made anew by :meth:`new_step`).

    ``factory`` makes one context manager (default: by device, see the module docstring).
    """

    def __init__(
        self, device: torch.device | str, factory: Callable[[], contextlib.AbstractContextManager] | None = None
    ):
        self.device = torch.device(device)
        self.factory = factory or partial(default_offload_context, self.device)
        self._outer: contextlib.AbstractContextManager | None = None

    def new_step(self) -> None:
        """Forget the previous micro-batch's outer context (its backward is done or abandoned)."""
        self._outer = None

    @contextlib.contextmanager
    def outer(self) -> Iterator[None]:
        if self._outer is None:
            self._outer = self.factory()
        with self._outer:
            yield

    @contextlib.contextmanager
    def inner(self) -> Iterator[None]:
        with self.factory():
            yield


def default_offload_context(device: torch.device) -> contextlib.AbstractContextManager:
    """torchtune's ``OffloadActivations`` on CUDA (pinned memory, a side stream); ``save_on_cpu`` elsewhere."""
    if device.type == "cuda":
        from torchtune.training import OffloadActivations

        return OffloadActivations()
    return torch.autograd.graph.save_on_cpu(pin_memory=False)
