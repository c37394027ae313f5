"""Run under ``torchrun --nproc_per_node 2``: one bilevel step with FSDP2 (gloo, CPU), per case.

Each rank takes its own micro-batch and its own φ_0. Rank 0 then recomputes every
rank's micro-batch on an unsharded single-process model and checks that the losses
and the averaged base-parameter gradients agree. Cases: activation checkpointing off/on
(``0,1``), all in one launch, since starting the processes costs more than the steps.
"""

import json
import sys

import torch.distributed as dist

from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.documents import Documents
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import dense_mask, document_positions
from focusft.split_decoder import SplitDecoder, shard_split_decoder
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import random_batch

FAST = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)
INNER = InnerLoopConfig(steps=2, lr=1.0, grad_clip=1.0)


def build(activation_checkpointing: bool) -> tuple[SplitDecoder, object]:
    decoder = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(decoder, FAST)
    return SplitDecoder(decoder, slots, activation_checkpointing), slots


def step(model, slots, rank: int):
    tokens, labels, layout = random_batch(2, 48, seed=rank)
    documents = Documents.from_layout(layout)  # several packed documents per row: chunk routing
    result = bilevel_step(
        model,
        slots,
        tokens,
        labels,
        mask=dense_mask(layout, "bidir_context"),
        input_pos=document_positions(layout.doc),
        inner=INNER,
        documents=documents,
        initial_fast_weights=slots.init([100 * rank + d for d in range(documents.count)]),
    )
    return result


def run_case(activation_checkpointing: bool) -> dict | None:
    """Rank 0: the case's gaps to the single-process step; other ranks: None."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model, slots = build(activation_checkpointing)
    shard_split_decoder(model)
    result = step(model, slots, rank)
    (result.loss / result.num_tokens).backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    losses = [None] * world
    dist.all_gather_object(losses, result.inner_losses.tolist())

    if rank == 0:
        reference, ref_slots = build(activation_checkpointing)
        ref_losses = []
        for r in range(world):
            ref = step(reference, ref_slots, r)
            (ref.loss / ref.num_tokens / world).backward()
            ref_losses.append(ref.inner_losses.tolist())
        worst = max((grads[n] - p.grad).abs().max().item() for n, p in reference.named_parameters())
        loss_gap = max(abs(a - b) for la, lb in zip(losses, ref_losses) for a, b in zip(la, lb))
        return {"grad_max_abs_diff": worst, "loss_max_abs_diff": loss_gap, "losses": losses}
    return None


def main(out_path: str, cases: list[bool]) -> None:
    dist.init_process_group("gloo")
    results = []
    for activation_checkpointing in cases:
        results.append(run_case(activation_checkpointing))
        dist.barrier()
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], [flag == "1" for flag in sys.argv[2].split(",")])
