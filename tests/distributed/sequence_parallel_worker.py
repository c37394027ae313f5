"""Run under ``torchrun --nproc_per_node N``: one optimizer step with Ulysses sequence parallelism (gloo, CPU).

For each mesh ``dp×sp`` given on the command line and each case (mask mode, packed or
unpacked rows, activation checkpointing, bilevel), every rank builds the FSDP2-sharded
model with Ulysses attention, takes its data-parallel rank's rows, keeps its sequence
shard, runs the bilevel step and one SGD step. Rank 0 then recomputes the same global
batch on one unsharded, whole-row model without any sequence-parallel code and records
the largest differences in inner losses, outer loss and θ after the step.

On CPU (gloo) the mask is dense; with ``cuda`` as the fourth argument (NCCL, one GPU per
process: tests/test_cuda.py) it is the FlexAttention BlockMask.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from focusft.batch import prepare_batch
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.flex import compile_flex_attention_for_all_lengths
from focusft.masks import build_mask
from focusft.normalization import outer_loss
from focusft.sequence_parallel import WHOLE_ROW, ParallelDims, apply_sequence_parallel
from focusft.split_decoder import IGNORE_INDEX, SplitDecoder, shard_split_decoder
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import documents_layout

FAST = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)
INNER = InnerLoopConfig(steps=2, lr=1.0, grad_clip=1.0)
LR = 1.0  # SGD: θ after the step differs exactly as much as the gradients do
WIDTH = 45  # odd: rows are padded to a multiple of sp
# Per data-parallel rank: packed rows whose documents cross the shard boundaries, one document per row,
# or rows that leave shards without a valid token.
ROWS = {
    "packed": [[[10, 20, 12], [30, 9]], [[7, 25, 11], [44]]],
    "unpacked": [[[45], [30]], [[21], [40]]],
    "short": [[[5, 6], [8]], [[4, 3], [9]]],  # packed, all in the first shard: the others hold only padding
}
DEVICE = torch.device("cpu")  # cuda:LOCAL_RANK with the `cuda` argument


def collated(kind: str, dp_rank: int) -> dict[str, torch.Tensor]:
    """A collated batch (unshifted labels, as collate_focus_batch makes it) of ``dp_rank``'s rows."""
    rows = ROWS[kind][dp_rank]
    generator = torch.Generator().manual_seed(dp_rank)
    layout = documents_layout(rows, WIDTH, generator)
    tokens = torch.randint(0, 500, layout.shape, generator=generator)
    labels = torch.where(~layout.context & layout.valid, tokens, IGNORE_INDEX)
    sample_index = torch.full((len(rows), max(len(r) for r in rows)), -1)
    for row, lengths in enumerate(rows):
        sample_index[row, : len(lengths)] = torch.arange(len(lengths)) + 10 * row + 100 * dp_rank
    return {
        "tokens": tokens,
        "labels": labels,
        "context": layout.context,
        "doc": layout.doc,
        "valid": layout.valid,
        "sample_index": sample_index,
    }


def build(checkpointing: bool, shard) -> tuple[SplitDecoder, object]:
    decoder = seeded_tiny_qwen2_5(0).to(DEVICE)
    slots = attach_fast_weight_slots(decoder, FAST)
    apply_sequence_parallel(decoder, shard)
    return SplitDecoder(decoder, slots, activation_checkpointing=checkpointing), slots


def micro_batch(model, slots, batch, mode: str, bilevel: bool, shard, reference: bool = False):
    """One bilevel step; on a CPU the SP runs take the row-block mask and the whole-row reference the dense one."""
    mb = prepare_batch(batch, DEVICE, "document", shard)
    kind = "block" if DEVICE.type == "cuda" else ("dense" if reference else "rows")
    return mb, bilevel_step(
        model,
        slots,
        mb.tokens,
        mb.labels,
        mask=build_mask(mb.layout, mode, kind, dtype=torch.float32),
        input_pos=mb.input_pos,
        inner=INNER if bilevel else None,
        documents=mb.documents,
        initial_fast_weights=slots.init(list(mb.documents.sample_index), device=DEVICE) if bilevel else None,
    )


def full_parameters(model) -> dict[str, torch.Tensor]:
    return {n: p.full_tensor() if isinstance(p, DTensor) else p.detach() for n, p in model.named_parameters()}


def run_case(
    parallel: ParallelDims, mode: str, kind: str, checkpointing: bool, bilevel: bool, normalization: str
) -> dict | None:
    rank, world = dist.get_rank(), dist.get_world_size()
    model, slots = build(checkpointing, parallel.sequence)
    shard_split_decoder(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    mb, result = micro_batch(model, slots, collated(kind, parallel.data_rank), mode, bilevel, parallel.sequence)
    outer = outer_loss(result.token_losses, mb.labels, mb.layout, normalization, parallel.sequence)
    sums = torch.stack([outer.loss.detach().float(), outer.weight.float()])
    dist.all_reduce(sums)
    # The recipe's normalisation: FSDP averages over all ranks; the loss is per response token or
    # per document of the global batch.
    (outer.loss * world / sums[1]).backward()
    optimizer.step()
    theta = full_parameters(model)
    inner = [None] * world
    dist.all_gather_object(inner, (parallel.data_rank, result.document_losses.cpu().tolist()))
    if rank != 0:
        return None

    reference, ref_slots = build(checkpointing, WHOLE_ROW)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
    initial = {n: p.detach().clone() for n, p in reference.named_parameters()}
    ref_inner, ref_loss, ref_weight = {}, 0.0, 0
    outers = []
    for d in range(parallel.dp):
        ref_mb, ref = micro_batch(reference, ref_slots, collated(kind, d), mode, bilevel, WHOLE_ROW, reference=True)
        outers.append((ref, outer_loss(ref.token_losses, ref_mb.labels, ref_mb.layout, normalization)))
    total = sum(int(o.weight) for _, o in outers)
    for d, (ref, ref_outer) in enumerate(outers):
        (ref_outer.loss / total).backward()
        ref_inner[d] = ref.document_losses
        ref_loss += float(ref_outer.loss.detach())
        ref_weight += int(ref_outer.weight)
    ref_optimizer.step()
    moved = max((p.detach() - initial[n]).abs().max().item() for n, p in reference.named_parameters())
    return {
        "case": f"{parallel.dp}x{parallel.sp} {mode} {kind} ac={int(checkpointing)} bilevel={int(bilevel)} "
        f"{normalization}",
        "inner": max((torch.tensor(losses) - ref_inner[d].cpu()).abs().max().item() for d, losses in inner),
        "outer": abs(float(sums[0] / sums[1]) - ref_loss / ref_weight),
        "theta": max((theta[n] - p.detach()).abs().max().item() for n, p in reference.named_parameters()),
        "tokens": [int(sums[1]), ref_weight],
        "theta_moved": moved,
    }


def main(out_path: str, meshes: str, cases: str, device: str = "cpu") -> None:
    global DEVICE
    if device == "cuda":
        DEVICE = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(DEVICE)
        compile_flex_attention_for_all_lengths()
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    world = dist.get_world_size()
    records = []
    for mesh in meshes.split(","):
        dp, sp = (int(x) for x in mesh.split("x"))
        assert dp * sp == world, (mesh, world)
        parallel = ParallelDims.build(sp, world, dist.get_rank(), DEVICE.type)
        for case in cases.split(","):
            mode, kind, checkpointing, bilevel, *normalization = case.split(":")
            records.append(
                run_case(parallel, mode, kind, checkpointing == "1", bilevel == "1", (normalization or ["token"])[0])
            )
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(records, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
