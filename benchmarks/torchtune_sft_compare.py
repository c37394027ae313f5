"""Standard SFT through the project's recipe vs torchtune's ``full_finetune_distributed``.

    python -m benchmarks.torchtune_sft_compare --seq-len 1024 --steps 8 --rounds 2

Same model (benchmarks.models.CPU_MODEL, random weights in an HF checkpoint), same
rows (unpacked, one document each, fixed length), same optimizer, steps and number
of processes; the recipe runs with ``focusft.bilevel=false focusft.attention=causal``.
The two alternate for ``--rounds`` rounds; each run's step times come from the
moment each step is logged (benchmarks/timing.py) and its first ``--skip`` steps are
left out as warm-up. The first losses of both are printed: they are the same
computation, so they must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from benchmarks.models import CPU_MODEL, write_checkpoint

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "torchtune full_finetune_distributed": "benchmarks/torchtune_cpu_recipe.py",
    "project recipe, Standard SFT": "recipes/focusft_distributed.py",
}


def common_config(base: Path, out: Path, args: argparse.Namespace) -> dict:
    model = {"_component_": "focusft.tiny.tiny_qwen2_5", **{k: v for k, v in vars(CPU_MODEL).items()}}
    return {
        "output_dir": str(out),
        "model": model,
        "tokenizer": {
            "_component_": "torchtune.models.qwen2_5.qwen2_5_tokenizer",
            "path": str(base / "vocab.json"),
            "merges_file": str(base / "merges.txt"),
            "special_tokens_path": str(base / "tokenizer.json"),
            "max_seq_len": None,
        },
        "checkpointer": {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(base),
            "checkpoint_files": ["model.safetensors"],
            "model_type": "QWEN2",
            "output_dir": str(out),
        },
        "dataset": {
            "_component_": "benchmarks.data.synthetic_dataset",
            "num_samples": args.steps * args.batch_size * args.nproc,
            "seq_len": args.seq_len,
            "vocab_size": CPU_MODEL.vocab_size,
        },
        "seed": 0,
        "shuffle": False,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "epochs": 1,
        "max_steps_per_epoch": args.steps,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-4, "weight_decay": 0.01, "fused": False},
        "clip_grad_norm": 1.0,
        "device": "cpu",
        "dtype": "fp32",
        "enable_activation_checkpointing": args.ac == "on",
        "compile": False,
        "resume_from_checkpoint": False,
        "metric_logger": {"_component_": "benchmarks.timing.TimedDiskLogger", "log_dir": str(out / "logs")},
        "log_every_n_steps": 1,
    }


def recipe_config(name: str, base: Path, out: Path, args: argparse.Namespace) -> dict:
    cfg = common_config(base, out, args)
    if name.startswith("torchtune"):
        cfg["loss"] = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
    else:
        cfg["focusft"] = {"bilevel": False, "attention": "causal"}
        cfg["lr_scheduler"] = None
    return cfg


def run(name: str, base: Path, work: Path, index: int, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    out = work / f"run{index}"
    config = work / f"config{index}.yaml"
    OmegaConf.save(OmegaConf.create(recipe_config(name, base, out, args)), config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(
        [*cmd, RECIPES[name], "--config", str(config)], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    times = json.loads((out / "logs" / "step_times.json").read_text())
    losses = []
    for log in sorted((out / "logs").glob("*.txt")):
        for line in log.read_text().splitlines():
            if "loss:" in line:
                losses.append(float(line.split("loss:")[1].split()[0]))
    return times, losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=2, help="step intervals left out of each run as warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each recipe")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--ac", choices=["on", "off"], default="on", help="activation checkpointing")
    args = parser.parse_args(argv)
    if args.steps <= args.skip + 1:
        parser.error(f"--steps must exceed --skip + 1 ({args.skip + 1}) to leave timed steps")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = write_checkpoint(CPU_MODEL, work / "base")
        times: dict[str, list[float]] = {name: [] for name in RECIPES}
        first_losses: dict[str, list[float]] = {}
        index = 0
        for round_index in range(args.rounds):
            names = list(RECIPES) if round_index % 2 == 0 else list(reversed(RECIPES))
            for name in names:
                step_times, losses = run(name, base, work, index, args)
                index += 1
                times[name] += step_times[args.skip :]
                first_losses.setdefault(name, losses)
                print(
                    f"round {round_index + 1}: {name}: {statistics.median(step_times[args.skip :]):.4f} s/step",
                    file=sys.stderr,
                    flush=True,
                )

    tt, ours = (statistics.median(times[name]) for name in RECIPES)
    print(
        f"Standard SFT, {args.seq_len} tokens × batch {args.batch_size} × {args.nproc} processes, "
        f"AC {args.ac}, {args.steps} steps per run, {args.rounds} alternating runs each, CPU ({os.cpu_count()} cores)"
    )
    print("")
    print("| recipe | median s/step | min–max | first losses |")
    print("|---|---|---|---|")
    for name in RECIPES:
        values = times[name]
        losses = ", ".join(f"{v:.4f}" for v in first_losses[name][:3])
        print(f"| {name} | {statistics.median(values):.4f} | {min(values):.4f}–{max(values):.4f} | {losses} |")
    print("")
    print(
        f"project / torchtune step time: {ours / tt:.3f}× (target ≤ 1.05×: {'pass' if ours / tt <= 1.05 else 'FAIL'})"
    )


if __name__ == "__main__":
    main()
