"""The longest sequence at which a FocuSFT step trains on one device, FSDP2 + activation checkpointing.

    python -m benchmarks.max_seq_len --preset qwen2.5-1.5b --start 32768 --stop 131072
    python -m benchmarks.max_seq_len --preset cpu --start 512 --stop 2048     # checks the search itself
    python -m benchmarks.max_seq_len --estimate --preset qwen2.5-7b --gpu-memory-gib 139   # no GPU needed
    python -m benchmarks.max_seq_len --preset qwen2.5-7b --offload --tiled --compare-estimate   # GPU
    python -m benchmarks.max_seq_len --validate        # the estimate against the measured CPU peak

``--estimate`` runs the step on fake tensors (benchmarks/memory_estimate.py) for Standard
SFT and FocuSFT with activation checkpointing, then with the tiled FFN, with activation
offloading, and with both, at 16K ... 1M tokens (doubling), prints the estimated peak
and the longest length that fits (the last doubling that fits, refined by ``--refine``
bisections toward the next, to multiples of 1K), issue 17's targets with pass/FAIL,
and last ``longest FocuSFT length: 7B=<N> tokens (<options>)``, one line per model.
FocuSFT is estimated twice, as the measured search runs it: with the inner passes
checkpointed selectively (the default: their attention outputs stay on the device) and
with ``enable_inner_activation_checkpointing`` (attention recomputed too); its longest
length is the better of the two. ``--preset all`` is 0.5B ... 72B.

The measured search (a GPU preset on a GPU; the CPU preset checks the search itself)
takes ``--variant``, ``--offload``, ``--tiled`` (``--ffn-tile-tokens``) and, with
``--compare-estimate``, prints the estimate beside ``torch.cuda.max_memory_allocated``
at the first length that trains.

Doubling search in one process (each new process would pay model set-up and
compilation again): one training step (mask, trunk, K inner steps, outer
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
from focusft.activation_memory import ActivationOffload
from focusft.bilevel import InnerLoopConfig
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.flex import compile_flex_attention_for_all_lengths
from focusft.masks import document_positions
from focusft.split_decoder import SplitDecoder, shard_split_decoder
from focusft.tiled_ffn import apply_tiled_ffn


def try_length(
    model: SplitDecoder, slots, preset, seq_len: int, inner_ac: bool, device: torch.device, variant: str = "FocuSFT"
) -> dict:
    """Two steps of ``variant`` at ``seq_len`` (the first compiles): seconds of the second and peak memory, or error.

    The optimizer is the recipes' (configs/*: fused AdamW), so the peak compares with the estimate's.
    """
    model.inner_checkpointing = "full" if inner_ac else "selective"
    tokens, labels, layout = synthetic_batch(seq_len, preset.vocab_size, seed=seq_len, device=device)
    layout = layout.to(device)
    setting = Setting(
        model=model,
        slots=slots,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=True),
        inner=InnerLoopConfig(steps=2),
        tokens=tokens,
        labels=labels,
        layout=layout,
        input_pos=document_positions(layout.doc),
        mask_kind="block" if device.type == "cuda" else "rows",
        activation_checkpointing=True,
        dtype=next(model.parameters()).dtype,
    )
    step = make_step(setting, variant, seed=seq_len)
    outcome = {"variant": variant, "seq_len": seq_len, "inner_activation_checkpointing": inner_ac}
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


def compare_estimate(preset, outcome: dict, args) -> None:
    """The fake-tensor estimate of a measured length beside its measured peak (``max_memory_allocated`` on CUDA).

    The measured steps start without gradients (each step zeroes them), so the estimate
    does too; it leaves out what the CUDA caching allocator and FSDP2 add (see
    benchmarks/memory_estimate.py).
    """
    options = StepOptions(
        bilevel=args.variant == "FocuSFT",
        inner_activation_checkpointing=outcome["inner_activation_checkpointing"],
        offload=args.offload,
        ffn_tile_tokens=args.ffn_tile_tokens if args.tiled else None,
        accumulated_gradients=False,
    )
    attention = "flex" if preset.device == "cuda" else "rows"
    estimated = estimate_step(preset, outcome["seq_len"], options, attention=attention).peak / 2**30
    measured = outcome.get("peak_allocated_gib")
    ratio = f"{estimated / measured:.3f}" if measured else "n/a (no CUDA statistics)"
    print(
        f"{preset.name} {options.name} at {outcome['seq_len']} tokens: estimated peak {estimated:.2f} GiB, "
        f"measured {'n/a' if measured is None else f'{measured:.2f}'} GiB, estimate / measured {ratio}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*sorted(PRESETS), "all"], default=["cpu"], nargs="+")
    parser.add_argument("--estimate", action="store_true", help="estimate on fake tensors instead of running")
    parser.add_argument("--validate", action="store_true", help="estimate and measure the CPU preset side by side")
    parser.add_argument("--gpu-memory-gib", type=float, default=139.0, help="memory the estimate must fit in")
    parser.add_argument("--ffn-tile-tokens", type=int, default=8192, help="tile of the tiled-FFN options")
    parser.add_argument("--variant", choices=["FocuSFT", "Standard SFT"], default="FocuSFT", help="measured search")
    parser.add_argument("--offload", action="store_true", help="measured search: activation offloading")
    parser.add_argument("--tiled", action="store_true", help="measured search: FFN in tiles of --ffn-tile-tokens")
    parser.add_argument(
        "--compare-estimate",
        action="store_true",
        help="measured search: also estimate the first length that trained, beside max_memory_allocated",
    )
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel degree (estimate: 1 only so far)")
    parser.add_argument("--refine", type=int, default=3, help="halvings between the last fit and first failure")
    parser.add_argument("--start", type=int, default=8192)
    parser.add_argument("--stop", type=int, default=131072, help="longest length tried")
    parser.add_argument("--budget-s", type=float, default=300.0, help="no new length is started after this")
    parser.add_argument("--json", help="also write the outcomes to this file")
    args = parser.parse_args(argv)
    if args.gpu_memory_gib <= 0:
        parser.error(f"--gpu-memory-gib must be > 0, got {args.gpu_memory_gib:g}")
    if args.ffn_tile_tokens < 1:
        parser.error(f"--ffn-tile-tokens must be >= 1, got {args.ffn_tile_tokens}")
    if args.estimate or args.validate:
        if args.sp != 1:
            # Extension point for Ulysses sequence parallelism: estimate one rank's step with its
            # 1/sp of the sequence and the all-to-all buffers once the SP attention exists.
            parser.error("FocuSFT estimate error: --sp > 1 is not modelled yet (needs the Ulysses attention path)")
        run = validate if args.validate else estimate
        run(args)
        return
    if len(args.preset) != 1 or args.preset[0] == "all":
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
    apply_tiled_ffn(decoder, args.ffn_tile_tokens if args.tiled else None)
    offload = ActivationOffload(device) if args.offload else None
    model = SplitDecoder(decoder, slots, activation_checkpointing=True, offload=offload)
    shard_split_decoder(model)  # FSDP2 over one process, as the recipe on one GPU

    began, outcomes, longest = time.perf_counter(), [], None
    seq_len = args.start
    while seq_len <= args.stop and time.perf_counter() - began < args.budget_s:
        outcome = try_length(model, slots, preset, seq_len, inner_ac=False, device=device, variant=args.variant)
        if not outcome["ok"] and args.variant == "FocuSFT":
            outcomes.append(outcome)
            outcome = try_length(model, slots, preset, seq_len, inner_ac=True, device=device, variant=args.variant)
        outcomes.append(outcome)
        print(json.dumps(outcome), flush=True)
        if not outcome["ok"]:
            break
        if args.compare_estimate and longest is None:  # one length per run: the first that trained
            compare_estimate(preset, outcome, args)
        longest = outcome
        seq_len *= 2

    what = args.variant + "".join(f" + {o}" for o, on in (("offload", args.offload), ("FFN tiles", args.tiled)) if on)
    if longest is None:
        print(f"{preset.name}: {what} did not train at {args.start} tokens (the shortest tried).")
    else:
        how = " with inner activation checkpointing" if longest["inner_activation_checkpointing"] else ""
        print(
            f"{preset.name}: longest {what} training step: {longest['seq_len']} tokens{how} "
            f"({longest['seconds_per_step']:.2f} s/step)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(outcomes, f, indent=1)
    torch.distributed.destroy_process_group()


ESTIMATE_LENGTHS = tuple(1 << k for k in range(14, 21))  # 16K ... 1M


def option_sets(tile: int) -> list[tuple[str, dict]]:
    """The memory options compared: checkpointing alone, + the tiled FFN, + offloading, + offloading and tiles."""
    return [
        ("AC", {}),
        (f"AC + FFN tiles {tile // 1024}K", {"ffn_tile_tokens": tile}),
        ("AC + offload", {"offload": True}),
        (f"AC + offload + FFN tiles {tile // 1024}K", {"offload": True, "ffn_tile_tokens": tile}),
    ]


def model_label(preset_name: str) -> str:
    return preset_name.removeprefix("qwen2.5-").upper()


# The estimated variants: Standard SFT, FocuSFT with its inner passes checkpointed selectively (the
# default), and FocuSFT with them checkpointed whole (``enable_inner_activation_checkpointing``).
VARIANTS: dict[str, dict] = {
    "SFT": {"bilevel": False},
    "FocuSFT": {"bilevel": True},
    "FocuSFT inner AC": {"bilevel": True, "inner_activation_checkpointing": True},
}
ESTIMATED_PRESETS = tuple(f"qwen2.5-{size}" for size in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b"))
# Issue 17, item 5: (preset, option set, least FocuSFT length); "best" / "no offload": the longest over
# all option sets / over those without offloading.
TARGETS = (
    ("qwen2.5-7b", "no offload", 131072),
    ("qwen2.5-7b", "AC + offload + FFN tiles", 262144),
    ("qwen2.5-1.5b", "best", 524288),
)
RATIO_TARGET = 0.9  # FocuSFT's longest length / Standard SFT's, under the same options


def estimate(args) -> None:
    """Estimated peak memory per length and option, the longest length that fits, the targets (docstring above)."""
    limit = args.gpu_memory_gib * 2**30
    names = ESTIMATED_PRESETS if "all" in args.preset else args.preset
    found: dict[str, dict[str, dict[str, int]]] = {}  # preset -> option set -> variant -> longest length
    for name in names:
        preset = PRESETS[name]
        print(f"## {name}: estimated peak GPU memory (GiB), one GPU, FSDP2, bf16, AdamW, batch 1, BlockMask path")
        print(f"fits: <= {args.gpu_memory_gib:g} GiB\n")
        options = option_sets(args.ffn_tile_tokens)
        columns = [
            (column_name(variant, label), StepOptions(**variant_kw, **kw))
            for label, kw in options
            for variant, variant_kw in VARIANTS.items()
        ]
        print("| tokens | " + " | ".join(c for c, _ in columns) + " |")
        print("|---|" + "---|" * len(columns))
        peaks: dict[tuple[str, int], float] = {}
        for seq_len in ESTIMATE_LENGTHS:
            row = []
            for column, opts in columns:
                # Past the first length that does not fit, longer ones do not either (peaks grow with length).
                if any(peaks.get((column, n), 0) > limit for n in ESTIMATE_LENGTHS if n < seq_len):
                    row.append("-")
                    continue
                peak = estimate_step(preset, seq_len, opts).peak
                peaks[(column, seq_len)] = peak
                row.append(f"{peak / 2**30:.1f}")
            print(f"| {seq_len // 1024}K | " + " | ".join(row) + " |", flush=True)
        print("\nlongest length that fits (- : not even the shortest):\n")
        print("| option | Standard SFT | FocuSFT | FocuSFT, inner AC | best FocuSFT / SFT |")
        print("|---|---|---|---|---|")
        found[name] = {}
        for label, kw in options:
            lengths = {}
            for variant, variant_kw in VARIANTS.items():
                opts = StepOptions(**variant_kw, **kw)
                grid = [n for n in ESTIMATE_LENGTHS if peaks.get((column_name(variant, label), n), limit + 1) <= limit]
                lengths[variant] = longest_fit(preset, opts, limit, grid, args.refine)
            found[name][label] = lengths
            ratio = best_focusft(lengths)[1] / lengths["SFT"] if lengths["SFT"] else float("nan")
            cells = " | ".join(f"{lengths[v]:,}" for v in VARIANTS)
            print(f"| {label} | {cells} | {ratio:.2f} |", flush=True)
        print()
    report_targets(found)
    for name, by_option in found.items():
        label, (variant, length) = max(((lab, best_focusft(v)) for lab, v in by_option.items()), key=lambda x: x[1][1])
        inner = " + inner AC" if variant != "FocuSFT" else ""
        print(f"longest FocuSFT length: {model_label(name)}={length} tokens ({label}{inner})")


def column_name(variant: str, option: str) -> str:
    """``FocuSFT AC + FFN tiles 8K``; the inner-AC variant as ``FocuSFT AC + inner AC + FFN tiles 8K``."""
    if variant == "FocuSFT inner AC":
        return "FocuSFT " + option.replace("AC", "AC + inner AC", 1)
    return f"{variant} {option}"


def best_focusft(lengths: dict[str, int]) -> tuple[str, int]:
    """FocuSFT's longest length under one option set: the better of the two inner-pass checkpointing modes."""
    return max(((v, n) for v, n in lengths.items() if v != "SFT"), key=lambda x: x[1])


def report_targets(found: dict[str, dict[str, dict[str, int]]]) -> list[tuple[str, bool]]:
    """Issue 17's targets against the estimated longest lengths: one ``pass``/``FAIL`` line each (returned too)."""
    verdicts: list[tuple[str, bool]] = []
    for name, option, least in TARGETS:
        if name not in found:
            continue
        by_option = {label: best_focusft(v)[1] for label, v in found[name].items()}
        if option == "best":
            length = max(by_option.values())
        elif option == "no offload":
            length = max(n for label, n in by_option.items() if "offload" not in label)
        else:
            length = next(n for label, n in by_option.items() if label.startswith(option))
        verdicts.append((f"{model_label(name)} FocuSFT, {option}: {length:,} >= {least:,} tokens", length >= least))
    for name, by_option in found.items():
        for label, v in by_option.items():
            ratio = best_focusft(v)[1] / v["SFT"] if v["SFT"] else float("nan")
            text = f"{model_label(name)} {label}: FocuSFT / SFT longest {ratio:.2f} >= {RATIO_TARGET}"
            verdicts.append((text, v["SFT"] > 0 and ratio >= RATIO_TARGET))
    print("targets (issue 17, estimated):")
    for text, ok in verdicts:
        print(f"  {'pass' if ok else 'FAIL'}  {text}")
    print()
    return verdicts


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
    threads = torch.get_num_threads()
    print(f"## Estimate vs measured peak memory, preset cpu (fp32, row-block mask), {threads} threads\n")
    print("| tokens | variant | estimated MiB | measured MiB | estimate / measured |")
    print("|---|---|---|---|---|")
    for seq_len in (1024, 2048, 4096):
        for opts in (StepOptions(bilevel=False), StepOptions(), StepOptions(ffn_tile_tokens=512)):
            estimated = estimate_step(preset, seq_len, opts, attention="rows").peak
            measured = measure_step(preset, seq_len, opts).peak
            print(
                f"| {seq_len} | {opts.name} | {estimated / 2**20:.1f} | {measured / 2**20:.1f} | "
                f"{estimated / measured:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
