"""The longest sequence at which a FocuSFT step trains on one device, FSDP2 + activation checkpointing.

    python -m benchmarks.max_seq_len --preset qwen2.5-1.5b --start 32768 --stop 131072
    python -m benchmarks.max_seq_len --preset cpu --start 512 --stop 2048     # checks the search itself

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
from benchmarks.models import PRESETS, build_model
from benchmarks.step_benchmark import Setting, make_step, setup_distributed, synchronize
from focusft.bilevel import InnerLoopConfig
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.flex import compile_flex_attention_for_all_lengths
from focusft.masks import document_positions
from focusft.split_decoder import SplitDecoder, shard_split_decoder


def try_length(model: SplitDecoder, slots, preset, seq_len: int, inner_ac: bool, device: torch.device) -> dict:
    """Two FocuSFT steps at ``seq_len`` (the first compiles); seconds of the second and peak memory, or the error."""
    model.inner_activation_checkpointing = inner_ac
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
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--start", type=int, default=8192)
    parser.add_argument("--stop", type=int, default=131072, help="longest length tried")
    parser.add_argument("--budget-s", type=float, default=300.0, help="no new length is started after this")
    parser.add_argument("--json", help="also write the outcomes to this file")
    args = parser.parse_args(argv)
    if args.start < 16 or args.stop < args.start:
        parser.error("need 16 <= --start <= --stop")

    preset = PRESETS[args.preset]
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


if __name__ == "__main__":
    main()
