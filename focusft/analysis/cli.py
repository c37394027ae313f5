"""``focusft-attention``: where one or more checkpoints' attention goes on one sample (report + plots).

    focusft-attention outputs/sft/epoch_4 outputs/focusft/epoch_4 --label SFT --label FocuSFT \\
        --mask causal bidir_context --synthetic tool --length 4096 --output-dir attention/
    focusft-attention outputs/focusft/epoch_4 --data data/train.jsonl --row 12 --output-dir attention/
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

from focusft.analysis.measure import decoder_forward, measure_attention
from focusft.analysis.metrics import HEATMAP_SIZE
from focusft.analysis.plots import write_plots
from focusft.analysis.report import CheckpointResult, write_report
from focusft.analysis.sample import AttentionSample, SampleError, dataset_sample, synthetic_sample
from focusft.config import FocusConfig
from focusft.data.chat import CONVERSATION_FORMATS
from focusft.data.synthetic import SPLITS, SYNTHETIC_TASKS
from focusft.eval.checkpoint import QwenCheckpoint, load_model, load_tokenizer, read_checkpoint
from focusft.eval.errors import CheckpointError
from focusft.masks import MASK_MODES
from focusft.run_guard import unwritable_reason


class UsageError(ValueError):
    """Options that do not fit together; the message names them."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="focusft-attention",
        description="Measure attention sink mass, budget by segment, positional profile and heatmaps of "
        "checkpoints on one tokenized sample; writes report.json, report.md and PNG plots.",
    )
    parser.add_argument("checkpoints", nargs="+", type=Path, help="HF checkpoint directories (epoch_N/, step_K/, ...)")
    parser.add_argument("--label", action="append", help="name of each checkpoint, in order (default: its path)")
    parser.add_argument("--tokenizer", type=Path, help="directory of the tokenizer files (default: first checkpoint)")
    parser.add_argument("--output-dir", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="JSON Lines (or JSON array) file in a training data format")
    source.add_argument("--synthetic", choices=SYNTHETIC_TASKS, help="generate the sample (focusft.data.synthetic)")
    parser.add_argument("--row", type=int, default=0, help="row of --data, from 0 (default 0)")
    parser.add_argument("--format", choices=sorted(CONVERSATION_FORMATS), default="openai", help="rows of --data")
    parser.add_argument("--length", type=int, default=4096, help="--synthetic: target tokens (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="--synthetic: seed (default 0)")
    parser.add_argument("--index", type=int, default=0, help="--synthetic: sample index (default 0)")
    parser.add_argument("--split", choices=SPLITS, default="eval", help="--synthetic: entity split (default eval)")
    parser.add_argument("--max-tokens", type=int, help="keep the system prompt and the latest exchanges that fit")
    parser.add_argument(
        "--mask",
        nargs="+",
        choices=MASK_MODES,
        default=["causal"],
        help="attention mask: one for all checkpoints or one each (bidir_context: FocuSFT's training mask)",
    )
    parser.add_argument("--heatmap-layer", type=int, help="layer of the heatmap (default: num_layers // 2)")
    parser.add_argument("--heatmap-size", type=int, default=HEATMAP_SIZE, help="max heatmap pixels per axis")
    parser.add_argument("--query-chunk", type=int, help="queries per probability chunk (default: ~64 MiB)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bfloat16 on cuda, float32 on cpu"
    )
    parser.add_argument(
        "--offload", action="store_true", help="keep the weights in CPU memory and move one layer at a time to --device"
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[list[QwenCheckpoint], list[str], list[str], torch.device]:
    """Everything that can be wrong, before any model is loaded."""
    unwritable = unwritable_reason(args.output_dir)
    if unwritable is not None:
        raise UsageError(f"--output-dir {unwritable}.")
    checkpoints = [read_checkpoint(path, args.tokenizer) for path in args.checkpoints]
    labels = args.label or [str(path) for path in args.checkpoints]
    if len(labels) != len(checkpoints):
        raise UsageError(f"--label was given {len(labels)} times for {len(checkpoints)} checkpoints.")
    masks = args.mask * len(checkpoints) if len(args.mask) == 1 else args.mask
    if len(masks) != len(checkpoints):
        raise UsageError(f"--mask has {len(args.mask)} values for {len(checkpoints)} checkpoints; give 1 or one each.")
    for name, value, minimum in (("--length", args.length, 16), ("--heatmap-size", args.heatmap_size, 1)):
        if value < minimum:
            raise UsageError(f"{name} must be at least {minimum}, got {value}.")
    for name in ("max_tokens", "query_chunk"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    for checkpoint in checkpoints:
        if args.heatmap_layer is not None and not 0 <= args.heatmap_layer < checkpoint.num_layers:
            raise UsageError(
                f"--heatmap-layer {args.heatmap_layer}: {checkpoint.path} has {checkpoint.num_layers} layers."
            )
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available here; use --device cpu.")
    return checkpoints, labels, masks, device


def load_sample(args: argparse.Namespace, checkpoint: QwenCheckpoint) -> AttentionSample:
    tokenizer = load_tokenizer(checkpoint)
    if args.data is not None:
        sample = dataset_sample(
            args.data, args.row, tokenizer, conversation_format=args.format, max_tokens=args.max_tokens
        )
    else:
        sample = synthetic_sample(args.synthetic, args.length, args.seed, tokenizer, index=args.index, split=args.split)
    return sample


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def run(args: argparse.Namespace) -> Path:
    checkpoints, labels, masks, device = check_args(args)
    sample = load_sample(args, checkpoints[0])
    for checkpoint in checkpoints:
        if sample.seq_len > checkpoint.max_position_embeddings:
            raise UsageError(
                f"The sample has {sample.seq_len} tokens, more than {checkpoint.path}'s max_position_embeddings "
                f"{checkpoint.max_position_embeddings}; pass --max-tokens."
            )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    dtype = resolve_dtype(args.dtype, device)
    mask_kind = FocusConfig(mask="auto").mask_kind(device, training=False)
    results = []
    for checkpoint, label, mask in zip(checkpoints, labels, masks):
        print(f"{label}: {checkpoint.num_layers} layers, {mask} mask, {sample.seq_len} tokens", file=sys.stderr)
        model = load_model(checkpoint, dtype=dtype, device=torch.device("cpu") if args.offload else device)
        metrics = measure_attention(
            model.layers,
            decoder_forward(model, offload_to=device if args.offload else None),
            sample,
            mask,
            device=device,
            mask_kind=mask_kind,
            heatmap_layer=args.heatmap_layer,
            heatmap_size=args.heatmap_size,
            query_chunk=args.query_chunk,
            progress=True,
        )
        results.append(CheckpointResult(label=label, path=str(checkpoint.path), mask=mask, metrics=metrics))
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    plots = write_plots(args.output_dir, sample, results)
    run_info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "mask_kind": mask_kind,
    }
    write_report(args.output_dir, sample, results, run_info, plots)
    return args.output_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except (CheckpointError, SampleError, UsageError) as err:
        print(f"focusft-attention: error: {err}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"Wrote {out / 'report.md'}, {out / 'report.json'} and plots to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
