"""CPU time of one attention layer's forward and backward: row blocks of several sizes against SDPA with the whole mask.

    python -m benchmarks.row_block_size --seq-len 4096 --blocks 128 256 512 1024 2048

The CPU preset's attention shape (4 heads of 64, batch 1), the step benchmark's synthetic
row (benchmarks/data.py), the bidir_context mask; one torch thread, the fastest of
``--repeats`` runs in CPU seconds of this process. What chose ``focusft.masks.ROW_BLOCK``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.data import synthetic_batch
from focusft.masks import RowBlockMask, build_mask
from focusft.row_block_attention import row_block_attention


def cpu_seconds(step: Callable[[], torch.Tensor], grad_out: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        step().backward(grad_out)
        times.append(time.process_time() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--blocks", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s, heads, head_dim = args.seq_len, 4, 64
    _, _, layout = synthetic_batch(s, 1000, seed=s, device="cpu")
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, s, head_dim, generator=generator, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(1, heads, s, head_dim, generator=generator)
    start = time.process_time()
    dense = build_mask(layout, "bidir_context", "dense", dtype=torch.float32)
    build = time.process_time() - start
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None])  # noqa: E731
    whole = cpu_seconds(sdpa, grad_out, args.repeats)
    print(f"| {s} tokens | CPU s, forward + backward | / whole mask |\n|---|---|---|")
    print(f"| whole mask (SDPA; building the mask once: {build:.3f} s more) | {whole:.3f} | 1.000× |")
    for block in args.blocks:
        mask = RowBlockMask(layout, "bidir_context", block=block)
        t = cpu_seconds(lambda mask=mask: row_block_attention(q, k, v, mask), grad_out, args.repeats)
        print(f"| row blocks of {block} | {t:.3f} | {t / whole:.3f}× |")


if __name__ == "__main__":
    main()
