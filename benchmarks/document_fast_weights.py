"""Per-document fast weights vs one shared set: FocuSFT step time on a packed row.

    python benchmarks/document_fast_weights.py [--documents 8] [--seq-len 1024] [--repeats 15]

Runs the same FocuSFT micro-batch (trunk, K inner steps, outer head, backward) on one
packed row of ``--documents`` documents, alternating after warm-up between
``fast_weight_scope: document`` (each document its own φ, chunk routing) and
``micro_batch`` (one φ for the row, the ablation), and prints the median step times
and their ratio (target: document / micro_batch ≤ 1.10). The ratio is taken from the
process's CPU time with one torch thread, which other processes on a shared machine
do not inflate; wall times are printed beside it. A script that prints figures, not a
test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.documents import Documents, fast_weight_seed
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import TokenLayout, dense_mask, document_positions
from focusft.split_decoder import IGNORE_INDEX, SplitDecoder
from focusft.tiny import TinyQwenConfig, seeded_tiny_qwen2_5

TARGET = 1.10


def packed_row(documents: int, seq_len: int, vocab: int, seed: int = 0):
    """One row of ``documents`` equal documents, each a few context/response turns; labels shifted."""
    generator = torch.Generator().manual_seed(seed)
    length = seq_len // documents
    doc = torch.arange(seq_len) // length
    turn = torch.arange(seq_len) % length // max(1, length // 6)  # 6 turns a document
    context = (turn % 2 == 0)[None]
    layout = TokenLayout(context=context, doc=doc.clamp(max=documents - 1)[None], valid=torch.ones_like(context))
    tokens = torch.randint(0, vocab, (1, seq_len), generator=generator)
    labels = torch.full_like(tokens, IGNORE_INDEX)
    trained = ~layout.context[:, 1:] & (layout.doc[:, 1:] == layout.doc[:, :-1])
    labels[:, :-1] = torch.where(trained, tokens[:, 1:], IGNORE_INDEX)
    return tokens, labels, layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-activation-checkpointing", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    decoder = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(decoder, FastWeightConfig())  # the tiny config's: rank 32, alpha 64
    model = SplitDecoder(decoder, slots, activation_checkpointing=not args.no_activation_checkpointing)
    inner = InnerLoopConfig()
    tokens, labels, layout = packed_row(args.documents, args.seq_len, TinyQwenConfig().vocab_size)
    sample_index = torch.arange(args.documents)[None]
    mask, positions = dense_mask(layout, "bidir_context"), document_positions(layout.doc)

    def step(scope: str) -> tuple[float, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        documents = Documents.from_layout(layout, sample_index, scope)
        initial = slots.init([fast_weight_seed(1234, 0, i) for i in documents.sample_index])
        result = bilevel_step(
            model,
            slots,
            tokens,
            labels,
            mask=mask,
            input_pos=positions,
            inner=inner,
            documents=documents,
            initial_fast_weights=initial,
        )
        result.loss.backward()
        model.zero_grad(set_to_none=True)
        return time.process_time() - cpu_start, time.perf_counter() - start

    scopes = ("document", "micro_batch")
    cpu: dict[str, list[float]] = {scope: [] for scope in scopes}
    wall: dict[str, list[float]] = {scope: [] for scope in scopes}
    for repeat in range(args.warmup + args.repeats):
        for scope in scopes if repeat % 2 == 0 else scopes[::-1]:
            cpu_seconds, wall_seconds = step(scope)
            if repeat >= args.warmup:
                cpu[scope].append(cpu_seconds)
                wall[scope].append(wall_seconds)

    median = {scope: statistics.median(values) for scope, values in cpu.items()}
    ratio = median["document"] / median["micro_batch"]
    print(
        f"tiny Qwen2.5 ({len(decoder.layers)} layers, dim {TinyQwenConfig().embed_dim}), one packed row of "
        f"{args.seq_len} tokens, {args.documents} documents, K={inner.steps}, rank {slots.config.rank}, "
        f"activation checkpointing {'off' if args.no_activation_checkpointing else 'on'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print("| fast weights | median CPU s/step | min–max | median wall s/step |")
    print("|---|---|---|---|")
    for scope in scopes:
        spread = f"{min(cpu[scope]):.4f}–{max(cpu[scope]):.4f}"
        print(f"| {scope} | {median[scope]:.4f} | {spread} | {statistics.median(wall[scope]):.4f} |")
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"per-document / shared step CPU time: {ratio:.3f}x ({verdict} the target <= {TARGET:.2f}x)")


if __name__ == "__main__":
    main()
