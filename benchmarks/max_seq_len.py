"""The longest sequence at which a FocuSFT step trains on one device, FSDP2 + activation checkpointing.

    python -m benchmarks.max_seq_len --preset qwen2.5-1.5b --start 32768 --stop 131072
    python -m benchmarks.max_seq_len --preset cpu --start 512 --stop 2048     # checks the search itself
    python -m benchmarks.max_seq_len --estimate --preset qwen2.5-7b --gpu-memory-gib 139   # no GPU needed
    python -m benchmarks.max_seq_len --validate        # the estimate against the measured CPU peak

``--estimate`` runs the step on fake tensors (benchmarks/memory_estimate.py) for Standard
SFT and FocuSFT with activation checkpointing, then with activation offloading, then
with offloading and the tiled FFN, at 16K ... 1M tokens, and prints the estimated peak
and the longest length that fits (searched by halving between the last fit and the
first failure). Its last lines read ``longest FocuSFT length: 7B=<N> tokens``.

Doubling search in one process (each new process would pay model set-up and
compilation again): one FocuSFT training step (mask, trunk, K inner steps, outer
head, backward, AdamW) per length, as in the recipe on one GPU. A length that runs
out of memory is tried once more with the inner passes checkpointed too
(``enable_inner_activation_checkpointing``); the search stops at the first length that
fails both ways or when ``--budget-s`` is spent.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from benchmarks.data import synthetic_batch
from benchmarks.memory_estimate import StepOptions, estimate_step, measure_step
from benchmarks.models import PRESETS, build_model
from benchmarks.step_benchmark import Setting, make_step, setup_distributed, synchronize
from focusft.bilevel import InnerLoopConfig
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.flex import compile_flex_attention_for_all_lengths
from focusft.masks import document_positions
from focusft.split_decoder import SplitDecoder, shard_split_decoder


def try_length(model: SplitDecoder, slots, preset, seq_len: int, inner_ac: bool, device: torch.device) -> dict:
    """Two FocuSFT steps at ``seq_len`` (the first compiles); seconds of the second and peak memory, or the error."""
    model.inner_checkpointing = "full" if inner_ac else "selective"
    tokens, labels, layout = synthetic_batch(seq_len, preset.vocab_size, seed=seq_len, device=device)
    layout = layout.to(device)
    setting = Setting(
        model=model,
        slots=slots,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5),
        inner=InnerLoopConfig(steps=2),
        tokens=tokens,
        labels=labels,
        layout=layout,
        input_pos=document_positions(layout.doc),
        mask_kind="block" if device.type == "cuda" else "dense",
        activation_checkpointing=True,
        dtype=next(model.parameters()).dtype,
    )
    step = make_step(setting, "FocuSFT", seed=seq_len)
    outcome = {"seq_len": seq_len, "inner_activation_checkpointing": inner_ac}
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        outcome["seconds_per_step"] = time.perf_counter() - start
        if device.type == "cuda":
            outcome["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        outcome["ok"] = True
    except torch.OutOfMemoryError:
        outcome["ok"] = False
        outcome["error"] = "out of memory"
    finally:
        setting.optimizer.zero_grad(set_to_none=True)
        del setting, step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return outcome


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", nargs="+")
    parser.add_argument("--estimate", action="store_true", help="estimate on fake tensors instead of running")
    parser.add_argument("--validate", action="store_true", help="estimate and measure the CPU preset side by side")
    parser.add_argument("--gpu-memory-gib", type=float, default=139.0, help="memory the estimate must fit in")
    parser.add_argument("--ffn-tile-tokens", type=int, default=8192, help="tile of the tiled-FFN options")
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel degree (estimate: 1 only so far)")
    parser.add_argument("--refine", type=int, default=3, help="halvings between the last fit and first failure")
    parser.add_argument("--start", type=int, default=8192)
    parser.add_argument("--stop", type=int, default=131072, help="longest length tried")
    parser.add_argument("--budget-s", type=float, default=300.0, help="no new length is started after this")
    parser.add_argument("--json", help="also write the outcomes to this file")
    args = parser.parse_args(argv)
    if args.estimate or args.validate:
        if args.sp != 1:
            # Extension point for Ulysses sequence parallelism: estimate one rank's step with its
            # 1/sp of the sequence and the all-to-all buffers once the SP attention exists.
            parser.error("FocuSFT estimate error: --sp > 1 is not modelled yet (needs the Ulysses attention path)")
        run = validate if args.validate else estimate
        run(args)
        return
    if len(args.preset) != 1:
        parser.error("a measured search takes one --preset")
    if args.start < 16 or args.stop < args.start:
        parser.error("need 16 <= --start <= --stop")

    preset = PRESETS[args.preset[0]]
    device = torch.device(preset.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"preset {preset.name} needs a CUDA GPU")
    setup_distributed(device)
    if device.type == "cuda":
        compile_flex_attention_for_all_lengths()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[preset.dtype]
    decoder = build_model(preset, device, dtype)
    slots = attach_fast_weight_slots(decoder, FastWeightConfig())
    model = SplitDecoder(decoder, slots, activation_checkpointing=True)
    shard_split_decoder(model)  # FSDP2 over one process, as the recipe on one GPU

    began, outcomes, longest = time.perf_counter(), [], None
    seq_len = args.start
    while seq_len <= args.stop and time.perf_counter() - began < args.budget_s:
        outcome = try_length(model, slots, preset, seq_len, inner_ac=False, device=device)
        if not outcome["ok"]:
            outcomes.append(outcome)
            outcome = try_length(model, slots, preset, seq_len, inner_ac=True, device=device)
        outcomes.append(outcome)
        print(json.dumps(outcome), flush=True)
        if not outcome["ok"]:
            break
        longest = outcome
        seq_len *= 2

    if longest is None:
        print(f"{preset.name}: FocuSFT did not train at {args.start} tokens (the shortest tried).")
    else:
        how = " with inner activation checkpointing" if longest["inner_activation_checkpointing"] else ""
        print(
            f"{preset.name}: longest FocuSFT training step: {longest['seq_len']} tokens{how} "
            f"({longest['seconds_per_step']:.2f} s/step)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(outcomes, f, indent=1)
    torch.distributed.destroy_process_group()


ESTIMATE_LENGTHS = tuple(1 << k for k in range(14, 21))  # 16K ... 1M


def option_sets(tile: int) -> list[tuple[str, dict]]:
    """The memory options compared: checkpointing alone, + offloading, + offloading and the tiled FFN."""
    return [
        ("AC", {}),
        ("AC + offload", {"offload": True}),
        (f"AC + offload + FFN tiles {tile // 1024}K", {"offload": True, "ffn_tile_tokens": tile}),
    ]


def model_label(preset_name: str) -> str:
    return preset_name.removeprefix("qwen2.5-").upper()


def estimate(args) -> None:
    """Estimated peak memory per length and option, and the longest length that fits (docstring above)."""
    limit = args.gpu_memory_gib * 2**30
    longest_focus: dict[str, int] = {}
    for name in args.preset:
        preset = PRESETS[name]
        print(f"## {name}: estimated peak GPU memory (GiB), one GPU, FSDP2, bf16, AdamW, batch 1, BlockMask path")
        print(f"fits: <= {args.gpu_memory_gib:g} GiB\n")
        options = option_sets(args.ffn_tile_tokens)
        columns = [
            (f"{variant} {label}", StepOptions(bilevel=bilevel, **kw))
            for label, kw in options
            for variant, bilevel in (("SFT", False), ("FocuSFT", True))
        ]
        print("| tokens | " + " | ".join(c for c, _ in columns) + " |")
        print("|---|" + "---|" * len(columns))
        peaks: dict[tuple[str, int], float] = {}
        for seq_len in ESTIMATE_LENGTHS:
            row = []
            for column, opts in columns:
                peak = estimate_step(preset, seq_len, opts).peak
                peaks[(column, seq_len)] = peak
                row.append(f"{peak / 2**30:.1f}")
            print(f"| {seq_len // 1024}K | " + " | ".join(row) + " |", flush=True)
        print("\nlongest length that fits:\n")
        print("| option | Standard SFT | FocuSFT | FocuSFT / SFT |")
        print("|---|---|---|---|")
        for label, kw in options:
            found = {}
            for variant, bilevel in (("SFT", False), ("FocuSFT", True)):
                opts = StepOptions(bilevel=bilevel, **kw)
                grid = [n for n in ESTIMATE_LENGTHS if peaks[(f"{variant} {label}", n)] <= limit]
                found[variant] = longest_fit(preset, opts, limit, grid, args.refine)
            ratio = found["FocuSFT"] / found["SFT"] if found["SFT"] else float("nan")
            print(f"| {label} | {found['SFT']:,} | {found['FocuSFT']:,} | {ratio:.2f} |", flush=True)
            longest_focus[name] = max(longest_focus.get(name, 0), found["FocuSFT"])
        print()
    for name, length in longest_focus.items():
        print(f"longest FocuSFT length: {model_label(name)}={length} tokens")


def longest_fit(preset, options: StepOptions, limit: float, fits: list[int], refine: int) -> int:
    """The longest length that fits: the last fitting grid length, refined by halving toward the next one."""
    if not fits:
        return 0
    low = max(fits)
    high = low * 2
    if low == ESTIMATE_LENGTHS[-1]:
        return low
    for _ in range(refine):
        middle = (low + high) // 2 // 1024 * 1024
        if middle in (low, high):
            break
        if estimate_step(preset, middle, options).peak <= limit:
            low = middle
        else:
            high = middle
    return low


def validate(args) -> None:
    """Estimated (fake tensors) against measured (real CPU step) peak memory, for the CPU preset."""
    preset = PRESETS["cpu"]
    print(f"## Estimate vs measured peak memory, preset cpu (fp32, dense mask), {torch.get_num_threads()} threads\n")
    print("| tokens | variant | estimated MiB | measured MiB | estimate / measured |")
    print("|---|---|---|---|---|")
    for seq_len in (1024, 2048, 4096):
        for opts in (StepOptions(bilevel=False), StepOptions(), StepOptions(ffn_tile_tokens=512)):
            estimated = estimate_step(preset, seq_len, opts, attention="dense").peak
            measured = measure_step(preset, seq_len, opts).peak
            print(
                f"| {seq_len} | {opts.name} | {estimated / 2**20:.1f} | {measured / 2**20:.1f} | "
                f"{estimated / measured:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
