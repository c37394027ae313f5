"""Ulysses sequence parallelism: a row split over ``sp`` ranks, attention over the whole row.

docs/DESIGN.md section 3b. Every rank of a sequence-parallel (SP) group gets the same rows
and keeps one contiguous shard of ``S / sp`` positions of each (rows padded to a multiple
of ``sp``). Embeddings, norms, the FFN with its fast weights and the loss work on the shard;
around attention an all-to-all turns sequence shards into head shards, so that each rank
attends over the whole row for ``H / sp`` heads with the whole row's mask (the same dense
mask or BlockMask as without SP), and a second all-to-all turns the result back
(DeepSpeed-Ulysses). Key/value heads arrive already repeated to ``H`` (torchtune expands
them before its attention call), so ``sp`` may exceed the number of key/value heads.

A document may span the ranks of a group: per-document sums (its response tokens, its
loss numerator, its fast-weight gradients) are summed over the group by
:meth:`SequenceShard.total` before anything divides or clips them, which makes the step
the same as without SP.

:class:`ParallelDims` names the process mesh's roles (as torchtitan's ``ParallelDims``):
data loading over ``dp``, parameters sharded by FSDP2 over all ``dp × sp`` ranks,
per-document reductions over ``sp``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torchtune.modules import MultiHeadAttention

from focusft.errors import ConfigError
from focusft.split_decoder import IGNORE_INDEX


@dataclass(frozen=True)
class SequenceShard:
    """This rank's contiguous part of each row, and the group that holds the other parts.

    The default (``size`` 1) is the whole row: padding, slicing and :meth:`total` do nothing.
    """

    rank: int = 0
    size: int = 1
    group: dist.ProcessGroup | None = None

    def columns(self, seq_len: int) -> slice:
        """Positions of this rank's shard in a row of ``seq_len`` (a multiple of ``size``)."""
        width = seq_len // self.size
        return slice(self.rank * width, (self.rank + 1) * width)

    def pad(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Right-pad a collated batch (:mod:`focusft.batch`) to a multiple of ``size`` positions.

        Padding is invalid (it attends only to itself and is never trained on) and keeps
        the row's last document id, so no document is added.
        """
        tokens = batch["tokens"]
        extra = -tokens.shape[1] % self.size
        if extra == 0:
            return batch
        padded = dict(batch)
        padded["valid"] = batch["valid"].bool() if "valid" in batch else torch.ones_like(tokens, dtype=torch.bool)
        if "doc" not in batch:
            padded["doc"] = torch.zeros_like(tokens)
        fills = {"tokens": 0, "labels": IGNORE_INDEX, "context": True, "valid": False}
        for key in ("tokens", "labels", "context", "valid", "doc"):
            value = padded[key]
            tail = value[:, -1:].expand(-1, extra) if key == "doc" else value.new_full((len(value), extra), fills[key])
            padded[key] = torch.cat([value, tail], dim=1)
        return padded

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over the SP group (no autograd): per-document sums of a row split over ranks."""
        if self.size == 1:
            return tensor
        return funcol.all_reduce(tensor, "sum", self.group).wait()


WHOLE_ROW = SequenceShard()


@dataclass(frozen=True)
class ParallelDims:
    """Data-parallel × sequence-parallel degrees and the mesh of their roles.

    Rank ``r`` is data-parallel rank ``r // sp`` and holds shard ``r % sp`` of its rows, so
    an SP group is ``sp`` consecutive ranks (one node, where the all-to-alls are cheapest).
    FSDP2 shards parameters over every rank: its default mesh. With ``sp == 1`` no mesh
    is built and nothing changes.
    """

    dp: int
    sp: int
    rank: int
    mesh: DeviceMesh | None = None

    @classmethod
    def build(cls, sequence_parallel_size: object, world_size: int, rank: int, device_type: str) -> ParallelDims:
        """Check the degrees (ConfigError) and build the ``(dp, sp)`` DeviceMesh (a collective)."""
        sp = sequence_parallel_size
        if isinstance(sp, bool) or not isinstance(sp, int) or sp < 1:
            raise ConfigError(f"`sequence_parallel_size` must be an integer >= 1, got {sp!r}.")
        if world_size % sp:
            raise ConfigError(
                f"sequence_parallel_size={sp} does not divide the {world_size} processes "
                "(world size = data-parallel size × sequence_parallel_size)."
            )
        dp = world_size // sp
        mesh = None if sp == 1 else init_device_mesh(device_type, (dp, sp), mesh_dim_names=("dp", "sp"))
        return cls(dp=dp, sp=sp, rank=rank, mesh=mesh)

    @property
    def data_rank(self) -> int:
        """Which rows this rank loads: its data-parallel rank (the sampler's ``rank``)."""
        return self.rank // self.sp

    @property
    def data_size(self) -> int:
        """How many different row sets one step loads (the sampler's ``num_replicas``)."""
        return self.dp

    @property
    def leads_sequence(self) -> bool:
        """Whether this rank counts what every rank of its SP group holds alike (documents, whole rows)."""
        return self.rank % self.sp == 0

    @property
    def sequence(self) -> SequenceShard:
        """This rank's shard of its rows and the group of the other shards."""
        if self.mesh is None:
            return WHOLE_ROW
        return SequenceShard(rank=self.rank % self.sp, size=self.sp, group=self.mesh["sp"].get_group())


class UlyssesAttention:
    """Replaces a ``MultiHeadAttention``'s attention call: shard-local q/k/v in, shard-local output out.

    ``q, k, v [b, H, s, d]`` (this rank's ``s = S / sp`` positions, all heads) become
    ``[b, H / sp, S, d]`` with one all-to-all, go through the original call with the whole
    row's mask, and the ``[b, H / sp, S, d]`` output goes back to ``[b, H, s, d]``.
    Set ``enabled = False`` (:func:`whole_sequences`) when every rank holds whole rows.
    """

    def __init__(self, attend: Callable[..., torch.Tensor], shard: SequenceShard) -> None:
        self.attend = attend
        self.shard = shard
        self.enabled = True

    def __call__(self, q, k, v, mask, dropout_p: float, is_causal: bool) -> torch.Tensor:
        if not self.enabled:
            return self.attend(q, k, v, mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        q, k, v = _sequence_to_heads(torch.stack([q, k, v]), self.shard).unbind(0)
        out = self.attend(q, k, v, mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        return _heads_to_sequence(out, self.shard)


def _sequence_to_heads(x: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
    """``[n, b, H, s, d]`` sequence shards -> ``[n, b, H/sp, sp·s, d]`` head shards over the whole row."""
    n, b, heads, s, d = x.shape
    sp = shard.size
    send = x.view(n, b, sp, heads // sp, s, d).permute(2, 0, 1, 3, 4, 5).contiguous()  # chunk j goes to rank j
    received = funcol.all_to_all_single_autograd(send, None, None, shard.group)  # chunk j came from shard j
    return received.permute(1, 2, 3, 0, 4, 5).reshape(n, b, heads // sp, sp * s, d)


def _heads_to_sequence(x: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
    """``[b, H/sp, S, d]`` head shards -> ``[b, H, S/sp, d]`` sequence shards (inverse of the above)."""
    b, heads, length, d = x.shape
    sp = shard.size
    send = x.view(b, heads, sp, length // sp, d).permute(2, 0, 1, 3, 4).contiguous()  # shard j goes to rank j
    received = funcol.all_to_all_single_autograd(send, None, None, shard.group)  # head group j came from rank j
    return received.permute(1, 0, 2, 3, 4).reshape(b, sp * heads, length // sp, d)


def check_heads(model: nn.Module, sp: int) -> None:
    """``sp`` must divide every attention layer's number of query heads (ConfigError)."""
    heads = sorted({m.num_heads for m in model.modules() if isinstance(m, MultiHeadAttention)})
    if not heads:
        raise ConfigError(
            "sequence_parallel_size > 1 needs a model of torchtune MultiHeadAttention layers; found none."
        )
    bad = [h for h in heads if h % sp]
    if bad:
        raise ConfigError(
            f"sequence_parallel_size={sp} does not divide the model's {bad[0]} attention heads "
            "(each rank attends with heads / sequence_parallel_size of them)."
        )


def apply_sequence_parallel(model: nn.Module, shard: SequenceShard) -> None:
    """Swap every attention call of ``model`` for its Ulysses form (nothing for the whole row).

    Only the (non-parameter) attention function changes: ``state_dict``, FSDP units and
    checkpoints are those of the plain model. Call on the meta-device model, before sharding.
    """
    if shard.size == 1:
        return
    check_heads(model, shard.size)
    for module in model.modules():
        if isinstance(module, MultiHeadAttention) and not isinstance(module._attention_call, UlyssesAttention):
            module._attention_call = UlyssesAttention(module._attention_call, shard)


@contextmanager
def whole_sequences(model: nn.Module) -> Iterator[None]:
    """Attention without the all-to-alls while every rank runs the same whole rows (the attention probe)."""
    calls = [m._attention_call for m in model.modules() if isinstance(m, MultiHeadAttention)]
    calls = [c for c in calls if isinstance(c, UlyssesAttention)]
    for call in calls:
        call.enabled = False
    try:
        yield
    finally:
        for call in calls:
            call.enabled = True


@dataclass(frozen=True)
class RankShapes:
    """What one rank of an SP group computes on, for memory estimates.

    Attributes:
        tokens: positions per rank outside attention (embeddings, norms, FFN, loss, the
            activations kept between layers): the padded row's ``S / sp``.
        attention_length: query and key positions per rank inside attention: the padded row.
        heads: query heads per rank inside attention (key/value heads arrive repeated to these).
    """

    tokens: int
    attention_length: int
    heads: int


def rank_shapes(seq_len: int, num_heads: int, sp: int) -> RankShapes:
    """Per-rank shapes of a row of ``seq_len`` under Ulysses with degree ``sp`` (a memory estimator's ``--sp``).

    Activations outside attention scale with ``tokens``; attention scores or kernel
    workspaces with ``heads × attention_length²`` (dense) or ``heads × attention_length``
    (flash / FlexAttention); a dense CPU mask is ``attention_length²`` on every rank.
    """
    if sp < 1 or num_heads % sp:
        raise ValueError(f"sequence parallel size {sp} must be >= 1 and divide the {num_heads} attention heads.")
    padded = seq_len + (-seq_len % sp)
    return RankShapes(tokens=padded // sp, attention_length=padded, heads=num_heads // sp)
