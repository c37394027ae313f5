"""Per-rank memory and step time of one FocuSFT step with Ulysses sequence parallelism, sp=2 vs sp=1.

    torchrun --standalone --nproc_per_node 2 -m benchmarks.sequence_parallel --seq-lens 2048 4096

Both settings run in one launch on the same two processes, one after the other, on the
CPU benchmark model (8 layers, width 256, 4 heads) with activation checkpointing, as the
recipe runs them: sp=1 is two data-parallel ranks, each training a whole row of its own;
sp=2 is one row split in halves over the two ranks. Per rank and length it reports the peak
growth of tensor memory during the step (prepare, mask, trunk, K inner steps, outer loss,
backward; :mod:`benchmarks.memory`) with the recipe's CPU mask (the row-block mask of
focusft/row_block_attention.py: the whole row's layout on every rank, no ``[S, S]`` tensor), and
the median wall and CPU seconds per step (in runs without the memory tracker). sp=2 trains
one row per step where sp=1 trains two, so its tokens per second per rank are half the
inverse of the wall-time ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist

from benchmarks.data import synthetic_row
from benchmarks.memory import TensorMemoryTracker
from benchmarks.models import CPU_MODEL, PRESETS, build_model
from focusft.batch import prepare_batch
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import build_mask
from focusft.sequence_parallel import ParallelDims, apply_sequence_parallel
from focusft.split_decoder import SplitDecoder, shard_split_decoder

MIB = 2**20


def batch_for(seq_len: int, data_rank: int) -> dict[str, torch.Tensor]:
    row = synthetic_row(seq_len, CPU_MODEL.vocab_size, seed=seq_len + data_rank)
    batch = {key: torch.tensor([value]) for key, value in row.items()}
    batch["sample_index"] = torch.tensor([[data_rank]])
    return batch


def measure(parallel: ParallelDims, seq_len: int, repeats: int) -> dict[str, float]:
    """Peak memory growth (MiB) of one step (its mask included), median s/step, on this rank."""
    decoder = build_model(PRESETS["cpu"], "cpu", torch.float32)
    slots = attach_fast_weight_slots(decoder, FastWeightConfig())
    apply_sequence_parallel(decoder, parallel.sequence)
    model = SplitDecoder(decoder, slots, activation_checkpointing=True)
    shard_split_decoder(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = batch_for(seq_len, parallel.data_rank)
    inner = InnerLoopConfig(steps=2)

    def step() -> None:
        mb = prepare_batch(batch, "cpu", "document", parallel.sequence)
        mask = build_mask(mb.layout, "bidir_context", "rows")  # the whole row's, as the recipe on a CPU
        result = bilevel_step(
            model,
            slots,
            mb.tokens,
            mb.labels,
            mask=mask,
            input_pos=mb.input_pos,
            inner=inner,
            documents=mb.documents,
            initial_fast_weights=slots.init(list(mb.documents.sample_index)),
        )
        result.loss.backward()

    step()  # warm-up; also creates the gradients and optimizer state, so they are not counted below
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    dist.barrier()
    with TensorMemoryTracker() as tracker:
        step()
    optimizer.zero_grad(set_to_none=False)
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return {
        "peak_mib": tracker.peak / MIB,
        "seconds": statistics.median(seconds) if seconds else float("nan"),
        "cpu_seconds": statistics.median(cpu_seconds) if cpu_seconds else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per setting (median; 0: memory only)")
    parser.add_argument("--json", help="also write the results (rank 0) to this file")
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != 2:
        parser.error("run on 2 processes: torchrun --standalone --nproc_per_node 2 -m benchmarks.sequence_parallel")
    torch.set_num_threads(1)
    meshes = {sp: ParallelDims.build(sp, world, rank, "cpu") for sp in (1, 2)}
    rows = []
    for seq_len in args.seq_lens:
        results = {sp: measure(parallel, seq_len, args.repeats) for sp, parallel in meshes.items()}
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        rows.append({"seq_len": seq_len, "ranks": gathered})
    if rank == 0:
        print(report(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    dist.destroy_process_group()


def report(rows: list[dict]) -> str:
    """A markdown table (the larger of the two ranks' figures) and the sp2/sp1 ratios."""
    lines = [
        "| length | sp | peak memory growth per rank, MiB | s/step | CPU s/step |",
        "|---|---|---|---|---|",
    ]
    ratios = []
    keys = ("peak_mib", "seconds", "cpu_seconds")
    for row in rows:
        worst = {sp: {key: max(rank[sp][key] for rank in row["ranks"]) for key in keys} for sp in (1, 2)}
        for sp, values in worst.items():
            lines.append(
                f"| {row['seq_len']} | {sp} | {values['peak_mib']:.1f} | {values['seconds']:.2f} "
                f"| {values['cpu_seconds']:.2f} |"
            )
        memory = worst[2]["peak_mib"] / worst[1]["peak_mib"]
        wall = worst[2]["seconds"] / worst[1]["seconds"]
        cpu = worst[2]["cpu_seconds"] / worst[1]["cpu_seconds"]
        ratios.append(
            f"{row['seq_len']}: memory sp2/sp1 {memory:.3f}×; "
            f"step time sp2/sp1 {wall:.3f}× wall, {cpu:.3f}× CPU (tokens/s per rank {0.5 / wall:.3f}× wall)"
        )
    return "\n".join([*lines, "", *ratios])


if __name__ == "__main__":
    main()
