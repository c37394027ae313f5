"""One training step of each variant, side by side: time, tokens/s, memory, ratio to Standard SFT.

    python -m benchmarks.step_benchmark --preset cpu                 # a few minutes on a 2-core CPU
    python -m benchmarks.step_benchmark --preset qwen2.5-1.5b --seq-lens 4096 16384
    python -m benchmarks.step_benchmark --preset qwen2.5-7b --dry-run  # build on the meta device, print the plan

Same model, data and sequence length for every variant; after warm-up the variants
alternate (the order rotates every round), so slow phases of a shared machine hit
all of them. A step is: build the mask, the bilevel step (trunk, K inner steps, outer
head), the outer backward and an AdamW step, as in the recipe. Single process, no
FSDP (the ratio is what matters), unless ``--fsdp``: FSDP2 over one process, as the
recipe runs on one GPU (used by benchmarks/max_seq_len.py).

``--ffn-tile-tokens N`` adds rows for Standard SFT and FocuSFT with the sequence-tiled
FFN (focusft/tiled_ffn.py), interleaved with the others, and a table of its memory saving.

On a CPU the masked variants train with the row-block mask (focusft/row_block_attention.py),
as the recipe does; ``--whole-mask`` adds a row for SFT+Bidir with the dense additive
``[b, s, s]`` mask and SDPA (the CPU path before it), interleaved with the others.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torchtune import training

from benchmarks.data import synthetic_batch
from benchmarks.memory import peak_memory_growth
from benchmarks.models import PRESETS, Preset, build_model
from benchmarks.reference import lora_from_fast_weights, straightforward_focusft_step
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FastWeightConfig, FastWeightSlots, attach_fast_weight_slots
from focusft.flex import compile_flex_attention_for_all_lengths
from focusft.masks import build_mask, document_positions
from focusft.split_decoder import SplitDecoder, shard_split_decoder
from focusft.tiled_ffn import TiledFeedForward, apply_tiled_ffn

# Activation checkpointing of the trunk and outer pass, and what the inner passes keep
# (focusft.activation_memory): "on" is the recipe's default with checkpointing on.
AC_MODES = ("off", "on", "on+inner", "on+no-inner")
INNER_CHECKPOINTING = {"off": "none", "on": "selective", "on+inner": "full", "on+no-inner": "none"}
VARIANTS = ("Standard SFT", "SFT+Bidir", "Causal Bilevel", "FocuSFT", "FocuSFT straightforward")
# (bilevel, attention) of each variant; the straightforward one is FocuSFT computed as the paper's code does.
VARIANT_SETTINGS = {
    "Standard SFT": (False, "causal"),
    "SFT+Bidir": (False, "bidir_context"),
    "Causal Bilevel": (True, "causal"),
    "FocuSFT": (True, "bidir_context"),
    "FocuSFT straightforward": (True, "bidir_context"),
}
# Targets of issue 11, checked at the end of a run (ratios of FocuSFT to the variant named).
TIME_TARGET_AC_ON = {"cpu": 1.45}
TIME_TARGET_AC_ON_GPU = 1.35
TIME_TARGET_AC_OFF = 1.50
STRAIGHTFORWARD_TARGET = 0.80
MEMORY_TARGET = 1.15  # issues 11 and 17: FocuSFT / Standard SFT peak memory growth
BIDIR_TIME_TARGET_AC_ON = 1.60  # issue 17: FocuSFT / SFT+Bidir CPU time, the dense-mask cost factored out
# Variants run with the tiled FFN when --ffn-tile-tokens is given: (row name, untiled variant it is compared with).
TILED_SUFFIX = ", tiled FFN"
TILED_VARIANTS = ("Standard SFT", "FocuSFT")
# The row --whole-mask adds: SFT+Bidir with the dense additive mask.
WHOLE_MASK_SUFFIX = ", whole mask"
WHOLE_MASK_VARIANT = "SFT+Bidir"


@dataclass
class Measurement:
    times: list[float] = field(default_factory=list)  # wall-clock seconds per step
    cpu_times: list[float] = field(default_factory=list)  # CPU seconds of this process per step
    memory: int | None = None  # bytes of peak growth during one step
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    def cost(self, device: torch.device) -> float:
        """What ratios compare: wall time on a GPU; on a CPU, this process's CPU time.

        With one torch thread, CPU time leaves out the time slices other processes of a
        shared machine take, which wall time cannot.
        """
        times = self.cpu_times if device.type == "cpu" else self.times
        return statistics.median(times) if times else float("nan")  # nan: memory only (--repeats 0)


@dataclass
class Setting:
    """Everything one (sequence length, activation checkpointing) cell needs."""

    model: SplitDecoder
    slots: FastWeightSlots
    optimizer: torch.optim.Optimizer
    inner: InnerLoopConfig
    tokens: torch.Tensor
    labels: torch.Tensor
    layout: object
    input_pos: torch.Tensor
    mask_kind: str
    activation_checkpointing: bool
    dtype: torch.dtype


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_ffn_tiles(model: SplitDecoder, tile_tokens: int | None) -> None:
    """Tile the FFNs made :class:`TiledFeedForward` by ``tile_tokens`` positions; ``None``: untiled.

    A ``TiledFeedForward`` whose tile holds the whole sequence makes one plain
    ``FeedForward`` call, so the untiled rows run exactly the untiled FFN.
    """
    for layer in model.decoder.layers:
        if isinstance(layer.mlp, TiledFeedForward):
            layer.mlp.tile_tokens = tile_tokens or sys.maxsize


def make_step(setting: Setting, variant: str, seed: int, ffn_tile_tokens: int | None = None) -> Callable[..., None]:
    """One training step of ``variant``: mask, forward(s), backward, then the optimizer if ``optimize``.

    With ``ffn_tile_tokens``, a variant named with :data:`TILED_SUFFIX` is its base
    variant with FFN tiles of that many positions and every other variant runs untiled
    (the model's FFNs made tileable beforehand); without, the model is run as it is.
    """
    tiles = ffn_tile_tokens if variant.endswith(TILED_SUFFIX) else None
    mask_kind = "dense" if variant.endswith(WHOLE_MASK_SUFFIX) else setting.mask_kind
    variant = variant.removesuffix(TILED_SUFFIX).removesuffix(WHOLE_MASK_SUFFIX)
    bilevel, attention = VARIANT_SETTINGS[variant]
    model, slots, s = setting.model, setting.slots, setting
    device = s.tokens.device

    def set_tiles() -> None:
        if ffn_tile_tokens is not None:
            set_ffn_tiles(model, tiles)

    def optimised(optimize: bool = True) -> None:
        set_tiles()
        s.optimizer.zero_grad(set_to_none=True)
        mask = build_mask(s.layout, attention, mask_kind, dtype=s.dtype)
        result = bilevel_step(
            model,
            slots,
            s.tokens,
            s.labels,
            mask=mask,
            input_pos=s.input_pos,
            inner=s.inner if bilevel else None,
            initial_fast_weights=slots.init([seed], device=device) if bilevel else None,
        )
        (result.loss / result.num_tokens.clamp(min=1)).backward()
        if optimize:
            s.optimizer.step()

    def straightforward(optimize: bool = True) -> None:
        set_tiles()
        s.optimizer.zero_grad(set_to_none=True)
        mask = build_mask(s.layout, attention, mask_kind, dtype=s.dtype)
        lora = lora_from_fast_weights(slots.init([seed], device=device))
        straightforward_focusft_step(
            model.decoder,
            lora,
            slots.config.scale,
            s.tokens,
            s.labels,
            mask=mask,
            input_pos=s.input_pos,
            steps=s.inner.steps,
            lr=s.inner.lr,
            grad_clip=s.inner.grad_clip,
            activation_checkpointing=s.activation_checkpointing,
        )
        if optimize:
            s.optimizer.step()

    return straightforward if variant == "FocuSFT straightforward" else optimised


def timed(step: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one step."""
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    step()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def breakdown(setting: Setting, seed: int) -> list[tuple[str, float]]:
    """Seconds of each part of one FocuSFT step, from hooks on the model's trunk/head calls."""
    device = setting.tokens.device
    marks: list[tuple[str, float]] = []

    def mark(name: str) -> None:
        synchronize(device)
        marks.append((name, time.perf_counter()))

    pre = setting.model.register_forward_pre_hook(lambda _, args: mark(f"{args[0]} start"))
    post = setting.model.register_forward_hook(lambda _, args, __: mark(f"{args[0]} end"))
    s = setting
    try:
        s.optimizer.zero_grad(set_to_none=True)
        mark("begin")
        mask = build_mask(s.layout, "bidir_context", s.mask_kind, dtype=s.dtype)
        mark("mask end")
        result = bilevel_step(
            s.model,
            s.slots,
            s.tokens,
            s.labels,
            mask=mask,
            input_pos=s.input_pos,
            inner=s.inner,
            initial_fast_weights=s.slots.init([seed], device=device),
        )
        mark("bilevel end")
        (result.loss / result.num_tokens.clamp(min=1)).backward()
        mark("backward end")
        s.optimizer.step()
        mark("optimizer end")
    finally:
        pre.remove()
        post.remove()
    times = dict(marks)
    heads = [t for name, t in marks if name == "head start"] + [times["bilevel end"]]
    parts = [("mask", times["mask end"] - times["begin"]), ("trunk", times["trunk end"] - times["trunk start"])]
    for k in range(len(heads) - 2):
        parts.append((f"inner step {k + 1} (head forward + fast-weight backward + update)", heads[k + 1] - heads[k]))
    parts += [
        ("outer head forward + loss", heads[-1] - heads[-2]),
        ("outer backward", times["backward end"] - times["bilevel end"]),
        ("optimizer", times["optimizer end"] - times["backward end"]),
    ]
    return parts


def cost_model(inner_steps: int, fraction: float, ac: str) -> float:
    """FocuSFT / SFT step cost, counting a layer's forward as 1 and its backward as 2.

    SFT: 3 per layer (4 with checkpointing: one more forward). FocuSFT adds, per inner
    step and adapted layer, a forward and an input-gradient-only backward (1 + 1), and
    one more forward when the inner passes are checkpointed (``on``: all of it but the
    attention, counted as a whole forward here; ``on+inner``: the whole forward).
    """
    sft = 3.0 if ac == "off" else 4.0
    inner = 2.0 if INNER_CHECKPOINTING[ac] == "none" else 3.0
    return 1 + inner * inner_steps * fraction / sft


def setup_distributed(device: torch.device) -> None:
    """A one-process group, so that the model can be sharded with FSDP2 as in the recipe."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    torch.distributed.init_process_group(training.get_distributed_backend(device.type))


def run_cell(args, preset: Preset, model: SplitDecoder, slots, seq_len: int, ac: str, device, results) -> None:
    model.activation_checkpointing = ac != "off"
    model.inner_checkpointing = INNER_CHECKPOINTING[ac]
    tokens, labels, layout = synthetic_batch(seq_len, preset.vocab_size, seed=seq_len, device=device)
    layout = layout.to(device)
    setting = Setting(
        model=model,
        slots=slots,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01),
        inner=InnerLoopConfig(steps=args.inner_steps),
        tokens=tokens,
        labels=labels,
        layout=layout,
        input_pos=document_positions(layout.doc),
        mask_kind="block" if device.type == "cuda" else "rows",
        activation_checkpointing=ac != "off",
        dtype=next(model.parameters()).dtype,
    )
    variants = row_variants(args)
    steps = {v: make_step(setting, v, seed=seq_len, ffn_tile_tokens=args.ffn_tile_tokens) for v in variants}
    cell = {v: Measurement() for v in variants}
    label = f"{seq_len} tokens, AC {ac}"
    for variant, step in steps.items():  # warm-up: compilation, allocator, optimizer state
        try:
            for _ in range(preset.warmup if args.warmup is None else args.warmup):
                step()
        except torch.OutOfMemoryError:
            cell[variant].error = "OOM"
            torch.cuda.empty_cache()
    live = [v for v in variants if cell[v].error is None]
    repeats = preset.repeats if args.repeats is None else args.repeats
    for round_index in range(repeats):
        order = live[round_index % len(live) :] + live[: round_index % len(live)] if live else []
        for variant in order:
            wall, cpu = timed(steps[variant], device)
            cell[variant].times.append(wall)
            cell[variant].cpu_times.append(cpu)
        print(f"[{label}] round {round_index + 1}/{repeats}", file=sys.stderr, flush=True)
    if not args.no_memory:  # mask, forward and backward (gradients included); the optimizer is the same for all
        for variant in live:
            setting.optimizer.zero_grad(set_to_none=True)
            cell[variant].memory = peak_memory_growth(partial(steps[variant], optimize=False), device)
    results[(seq_len, ac)] = cell
    if not args.no_breakdown and "FocuSFT" in live and args.inner_steps > 0:
        set_ffn_tiles(model, None)
        results[("breakdown", seq_len, ac)] = breakdown(setting, seed=seq_len)


def row_variants(args) -> list[str]:
    """The variants asked for, then the tiled-FFN rows (``--ffn-tile-tokens``) and the ``--whole-mask`` row."""
    tiled = [v + TILED_SUFFIX for v in TILED_VARIANTS if v in args.variants] if args.ffn_tile_tokens else []
    whole = [WHOLE_MASK_VARIANT + WHOLE_MASK_SUFFIX] if args.whole_mask and WHOLE_MASK_VARIANT in args.variants else []
    return [*args.variants, *tiled, *whole]


def report(args, preset: Preset, fraction: float, results) -> str:
    """Markdown tables of the measurements, the cost model beside them, and the targets."""
    device = torch.device(preset.device)
    on_cpu = device.type == "cpu"
    lines = [
        f"### Step benchmark: preset `{preset.name}`, {preset.dtype}, K={args.inner_steps}, "
        f"adapted layer fraction f={fraction:.3f}"
        + (
            f', rows "…{TILED_SUFFIX}": FFN in tiles of {args.ffn_tile_tokens} positions'
            if args.ffn_tile_tokens
            else ""
        ),
        "",
        "| length | AC | variant | median s/step | spread (min–max) | "
        + ("CPU s/step | " if on_cpu else "")
        + "tokens/s | peak memory growth* | "
        + ("CPU time / SFT" if on_cpu else "time / SFT")
        + " | memory / SFT | cost model |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if on_cpu else ""),
    ]
    checks: list[tuple[str, float, float | None]] = []  # (name, measured, target; None: shown, no target)
    tiling: list[str] = []
    for (seq_len, ac), cell in ((k, v) for k, v in results.items() if k[0] != "breakdown"):
        base = cell.get("Standard SFT")
        base = base if base is not None and not base.error else None
        model = cost_model(args.inner_steps, fraction, ac)
        for variant in row_variants(args):
            m = cell[variant]
            if m.error:
                lines.append(f"| {seq_len} | {ac} | {variant} | {m.error} | | | | | | |" + (" |" if on_cpu else ""))
                continue
            ratio = m.cost(device) / base.cost(device) if base else float("nan")
            mem_ratio = m.memory / base.memory if base and base.memory and m.memory is not None else float("nan")
            memory = f"{m.memory / 2**20:.1f} MiB" if m.memory is not None else "–"
            predicted = ""
            if variant == "FocuSFT":
                predicted = f"{model:.3f} (measured {ratio - model:+.3f})"
            lines.append(
                f"| {seq_len} | {ac} | {variant} | {m.median:.4f} | "
                + (f"{min(m.times):.4f}–{max(m.times):.4f} | " if m.times else "– | ")
                + (f"{m.cost(device):.4f} | " if on_cpu else "")
                + f"{seq_len / m.median:,.0f} | {memory} | "
                f"{ratio:.3f}× | {mem_ratio:.3f}× | {predicted} |"
            )
        focus = cell.get("FocuSFT")
        if focus and not focus.error and base:
            time_limit = {"on": TIME_TARGET_AC_ON.get(preset.name, TIME_TARGET_AC_ON_GPU), "off": TIME_TARGET_AC_OFF}
            if ac in time_limit:  # the issue sets no time target for checkpointed inner passes
                checks.append(
                    (f"{seq_len}, AC {ac}: FocuSFT / SFT time", focus.cost(device) / base.cost(device), time_limit[ac])
                )
            if focus.memory is not None and base.memory:
                checks.append(
                    (
                        f"{seq_len}, AC {ac}: FocuSFT / SFT memory growth",
                        focus.memory / base.memory,
                        MEMORY_TARGET,
                    )
                )
            bidir = cell.get("SFT+Bidir")
            if ac == "on" and bidir and not bidir.error:
                checks.append(
                    (
                        f"{seq_len}, AC {ac}: FocuSFT / SFT+Bidir time",
                        focus.cost(device) / bidir.cost(device),
                        BIDIR_TIME_TARGET_AC_ON,
                    )
                )
            if bidir and not bidir.error and focus.memory is not None and bidir.memory:
                checks.append(
                    (
                        f"{seq_len}, AC {ac}: FocuSFT / SFT+Bidir memory growth (same mask)",
                        focus.memory / bidir.memory,
                        None,
                    )
                )
            whole = cell.get(WHOLE_MASK_VARIANT + WHOLE_MASK_SUFFIX)
            if bidir and whole and not bidir.error and not whole.error:
                name = f"{seq_len}, AC {ac}: SFT+Bidir row blocks / whole mask"
                checks.append((f"{name} time", bidir.cost(device) / whole.cost(device), None))
                if bidir.memory is not None and whole.memory:
                    checks.append((f"{name} memory growth", bidir.memory / whole.memory, None))
            slow = cell.get("FocuSFT straightforward")
            if slow and not slow.error:
                checks.append(
                    (
                        f"{seq_len}, AC {ac}: FocuSFT / straightforward time",
                        focus.cost(device) / slow.cost(device),
                        STRAIGHTFORWARD_TARGET,
                    )
                )
        for variant in TILED_VARIANTS:
            plain, tiled = cell.get(variant), cell.get(variant + TILED_SUFFIX)
            if plain and tiled and not plain.error and not tiled.error and plain.memory and tiled.memory is not None:
                tiling.append(
                    f"| {seq_len} | {ac} | {variant} | {plain.memory / 2**20:.1f} MiB | "
                    f"{tiled.memory / 2**20:.1f} MiB | "
                    f"{tiled.memory / plain.memory:.3f}× | {tiled.cost(device) / plain.cost(device):.3f}× |"
                )
    if tiling:
        lines += [
            "",
            f"Sequence-tiled FFN, tiles of {args.ffn_tile_tokens} positions, against the same variant untiled:",
            "",
            "| length | AC | variant | memory growth untiled | tiled | tiled / untiled memory | "
            + ("tiled / untiled CPU time |" if on_cpu else "tiled / untiled time |"),
            "|---|---|---|---|---|---|---|",
            *tiling,
        ]
    for key, parts in ((k, v) for k, v in results.items() if k[0] == "breakdown"):
        _, seq_len, ac = key
        total = sum(t for _, t in parts)
        lines += ["", f"One FocuSFT step, {seq_len} tokens, AC {ac} (synchronised, one run):", ""]
        lines += ["| part | s | share |", "|---|---|---|"]
        lines += [f"| {name} | {t:.4f} | {t / total:.0%} |" for name, t in parts]
    lines += [
        "",
        (
            "Time ratios compare this process's CPU time per step (one torch thread), which leaves out time "
            "taken by other processes of a shared machine; wall times are shown beside it. "
            if on_cpu
            else ""
        )
        + "*Peak memory above what was allocated before the step, over mask, forward and backward (gradients "
        "included; the optimizer step, the same for every variant, left out). CPU: live tensor storages "
        "(benchmarks/memory.py); CUDA: max_memory_allocated.",
    ]
    checks = [c for c in checks if not math.isnan(c[1])]  # no time ratios without timed rounds
    lines += ["", "Targets (issues 11 and 17):", "", "| check | measured | target | |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {value:.3f}× | – | (shown) |"
        if limit is None
        else f"| {name} | {value:.3f}× | ≤ {limit:.2f}× | {'pass' if value <= limit else 'FAIL'} |"
        for name, value, limit in checks
    ]
    lines += [
        "",
        "Cost model: a layer's forward = 1, its backward = 2; SFT = 3 per layer (4 with activation "
        "checkpointing), FocuSFT adds 2·K·f (each inner step: forward + input-gradient backward of the "
        "adapted layers), so FocuSFT/SFT = 1 + 2·K·f/3 without and 1 + K·f/2 with checkpointing when the inner "
        "passes keep everything (on+no-inner), 1 + 3·K·f/4 when they are checkpointed (on: selectively, "
        "counted as one more whole forward each; on+inner). It leaves "
        "out the embedding, the output projection and loss (response tokens only, K+1 times in FocuSFT), the "
        "mask, the fast-weight update and the optimizer; the breakdown above shows what those cost here.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--seq-lens", type=int, nargs="+", help="default: the preset's")
    parser.add_argument(
        "--ac",
        choices=AC_MODES,
        nargs="+",
        default=["on", "off"],
        help="activation checkpointing: off; on (trunk and outer pass; inner passes selectively: attention "
        "outputs kept); on+inner (inner passes fully recomputed); on+no-inner (inner passes keep everything)",
    )
    parser.add_argument(
        "--ffn-tile-tokens", type=int, help="add Standard SFT and FocuSFT rows with FFN tiles of this many positions"
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--whole-mask", action="store_true", help="add SFT+Bidir with the dense [b, s, s] mask (what row blocks cost)"
    )
    parser.add_argument("--inner-steps", type=int, default=2)
    parser.add_argument("--layer-fraction", type=float, default=0.35)
    parser.add_argument("--repeats", type=int, help="timed rounds (default: the preset's; 0: memory only)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per variant (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 over one process, as the recipe does")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-part breakdown")
    parser.add_argument("--json", help="also write the raw measurements to this file")
    parser.add_argument("--dry-run", action="store_true", help="build the model on the meta device, print the plan")
    args = parser.parse_args(argv)
    for seq_len in args.seq_lens or []:
        if seq_len < 16:
            parser.error(f"--seq-lens: {seq_len} is too short for the synthetic turns (need >= 16)")
    if args.inner_steps < 0:
        parser.error("--inner-steps must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    seq_lens = args.seq_lens or list(preset.seq_lens)
    device = torch.device(preset.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[preset.dtype]
    fast_cfg = FastWeightConfig(layer_fraction=args.layer_fraction)

    if args.dry_run:
        decoder = build_model(preset, "meta", dtype)
        slots = attach_fast_weight_slots(decoder, fast_cfg)
        fraction = (slots.num_layers - slots.first_layer) / slots.num_layers
        params = sum(p.numel() for p in decoder.parameters())
        print(
            f"preset {preset.name}: {params / 1e9:.3f}B parameters, {slots.num_layers} layers, fast weights on "
            f"{slots.first_layer}..{slots.num_layers - 1} (f={fraction:.3f}), {preset.dtype} on {preset.device}"
        )
        print(f"lengths {seq_lens}, AC {args.ac}, variants {args.variants}")
        for ac in args.ac:
            print(f"cost model FocuSFT/SFT, AC {ac}: {cost_model(args.inner_steps, fraction, ac):.3f}")
        return

    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"Preset {preset.name} needs a CUDA GPU; run --preset cpu here (or --dry-run).")
    if args.threads or device.type == "cpu":
        # One thread by default on CPU: less sensitive to other work on a shared machine.
        torch.set_num_threads(args.threads or 1)
    if args.fsdp:
        setup_distributed(device)
    if device.type == "cuda":
        compile_flex_attention_for_all_lengths()
    decoder = build_model(preset, device, dtype)
    slots = attach_fast_weight_slots(decoder, fast_cfg)
    apply_tiled_ffn(decoder, args.ffn_tile_tokens)
    model = SplitDecoder(decoder, slots)
    if args.fsdp:
        shard_split_decoder(model)
    fraction = (slots.num_layers - slots.first_layer) / slots.num_layers
    results: dict = {}
    for seq_len in seq_lens:
        for ac in args.ac:
            run_cell(args, preset, model, slots, seq_len, ac, device, results)
    print(f"Machine: {machine(device)}; {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    print(report(args, preset, fraction, results))
    if args.json:
        raw = {
            f"{k[0]}|{k[1]}": {v: vars(m) for v, m in cell.items()}
            for k, cell in results.items()
            if k[0] != "breakdown"
        }
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    if args.fsdp:
        torch.distributed.destroy_process_group()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
