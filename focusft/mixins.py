"""Giving an existing module extra behaviour in place, by switching it to a subclass.

As ``torch.nn.utils.parametrize`` does: the module keeps its object, parameters and their
names, so FSDP, the optimizer and checkpoints see the same module; only its ``forward``
(or whatever the mixin defines) changes. Used for the fast-weight slots
(:mod:`focusft.fast_weights`) and the split layers (:mod:`focusft.split_decoder`).
"""

from __future__ import annotations

from torch import nn

_SUBCLASSES: dict[tuple[type, type], type] = {}


def add_mixin(module: nn.Module, mixin: type, suffix: str) -> nn.Module:
    """Switch ``module`` (in place) to ``<its class><suffix>(mixin, its class)``; a no-op if it already has ``mixin``.

    One subclass is made per (mixin, class) and reused, so modules of one class stay of one class.
    """
    cls = type(module)
    if isinstance(module, mixin):
        return module
    if (mixin, cls) not in _SUBCLASSES:
        _SUBCLASSES[mixin, cls] = type(f"{cls.__name__}{suffix}", (mixin, cls), {"__module__": mixin.__module__})
    module.__class__ = _SUBCLASSES[mixin, cls]
    return module
