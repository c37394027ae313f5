"""Fast-weight settings for the demo, chosen by full FocuSFT training runs (issue 22, item 2).

    python benchmarks/fast_weight_sweep.py --output-dir outputs/fw_sweep \\
        --setting 0.5,1,0.35 --setting 0.134,8,1.0 [--jobs 2] [--nproc 1]

Each ``--setting INNER_LR,RANK,LAYER_FRACTION`` (alpha = 2 × rank) trains FocuSFT with the demo's
default size, starting model and data (the stages of ``python -m focusft.demo``, reused across
settings and runs), then scores the checkpoint as a plain model (no fast weights, causal) on the
demo's held-out stories at the training length. Printed per setting, the two criteria:

- ``drop %``: the mean relative drop of the answer loss over the K inner steps, over all training
  steps (the demo's ``inner_loss_reduction``, from the metric log); ≥ 10% asked;
- ``exact %``: held-out exact match at the training length; ≥ 90% asked;

and, to catch fast weights that memorise each answer instead of θ learning the task, θ's own
answer loss (``inner_loss_before_0``) and the outer loss, both as means over the last 10 steps,
and the step from which the inner loop lowers the answer loss by more than half. A run stopped
by hand (a hopeless setting) is reported from its log so far; ``--report`` trains nothing and
prints the table of the runs' logs as they are.
A drop at θ at the start of training (``benchmarks/inner_loop_sweep.py``) does not predict
either figure; hence a full run per setting. ``--nproc 1`` trains on one process with the
per-process batch doubled, so the global batch (16) and the data stay the demo's; ``--jobs``
runs that many settings at once, each training process with its share of the cores (more OpenMP
threads than cores made two jobs of one process each about 40× slower here).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from statistics import mean
from typing import Any

from focusft.bilevel import InnerLoopConfig
from focusft.demo.cli import Demo, parse_args
from focusft.demo.results import eval_scores, inner_loss_drop, read_metrics
from focusft.demo.settings import VARIANTS, FastWeightScale
from focusft.demo.stages import MARKER, StageError
from focusft.fast_weights import FastWeightConfig

TAIL = 10  # steps at the end of a run over which θ's and the outer loss (and the drop's onset) are averaged


def setting(text: str) -> FastWeightScale:
    """``INNER_LR,RANK,LAYER_FRACTION`` with alpha = 2 × rank (the demo's LoRA scale), checked as the recipe does."""
    try:
        lr, rank, fraction = text.split(",")
        fw = FastWeightScale(rank=int(rank), alpha=2.0 * int(rank), inner_lr=float(lr), layer_fraction=float(fraction))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected INNER_LR,RANK,LAYER_FRACTION, got {text!r}") from err
    try:
        FastWeightConfig(rank=fw.rank, alpha=fw.alpha, layer_fraction=fw.layer_fraction)
        InnerLoopConfig(lr=fw.inner_lr)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err
    return fw


def tag(fw: FastWeightScale) -> str:
    return f"lr{fw.inner_lr:g}_r{fw.rank}_f{fw.layer_fraction:g}"


def onset(rows: list[dict[str, float]], window: int = TAIL, level: float = 0.5) -> int | None:
    """The first step whose ``window``-step mean inner-loop drop passed ``level``: memorisation took over."""
    for end in range(window, len(rows) + 1):
        if (inner_loss_drop(rows[end - window : end]) or 0.0) > level:
            return int(rows[end - 1]["step"])
    return None


def log_figures(demo: Demo, fw: FastWeightScale) -> dict[str, Any]:
    """The metric log's figures of one setting's run, finished or stopped: steps, drop, θ's and outer loss."""
    log = demo.out / "runs" / f"train_{tag(fw)}" / "logs" / "metrics.txt"
    if not log.is_file():
        raise SystemExit(f"focusft-sweep: no metric log for {tag(fw)} at {log}: not trained yet, or training failed.")
    rows = read_metrics(log)
    tail = rows[-TAIL:]
    return {
        "setting": tag(fw),
        "steps": len(rows),
        "drop": inner_loss_drop(rows),
        "theta_loss_tail": mean(r["inner_loss_before_0"] for r in tail),
        "outer_loss_tail": mean(r["loss"] for r in tail),
        "onset": onset(rows),
    }


def run_setting(demo: Demo, fw: FastWeightScale, train: bool = True) -> dict[str, Any]:
    """Train FocuSFT with ``fw`` and score it at the training length (``train=False``: the logs as they are)."""
    data = demo.out / "data"
    length = demo.size.eval_tokens[0]
    eval_dir = demo.out / "eval" / tag(fw)
    if train:
        overrides = [*VARIANTS["focusft"].overrides(), *fw.overrides()]
        try:
            checkpoint, _ = demo._train(f"train_{tag(fw)}", data / "train.jsonl", overrides, force=False)
            demo._stage(
                f"eval_{tag(fw)}",
                [
                    *(sys.executable, "-m", "focusft.demo.evaluate", str(checkpoint), "--label", tag(fw)),
                    *("--output-dir", str(eval_dir), "--attention", "causal"),
                    *("--data", f"{length}={data}/eval_{length}.jsonl"),
                ],
                eval_dir,
                {"checkpoint": str(checkpoint), "length": length},
            )
        except StageError as err:  # stopped by hand once the outcome was clear, or failed: the figures so far
            print(f"focusft-sweep: {err}", flush=True)
    figures = log_figures(demo, fw)
    if (eval_dir / MARKER).is_file():
        figures["exact"], figures["stderr"], _, _ = eval_scores(eval_dir / "causal")[length]
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", type=setting, action="append", required=True, help="INNER_LR,RANK,LAYER_FRACTION")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fw_sweep"))
    parser.add_argument("--nproc", type=int, default=2, help="training processes per run (default 2, as the demo)")
    parser.add_argument("--jobs", type=int, default=1, help="settings trained at once")
    parser.add_argument("--report", action="store_true", help="train nothing: the table of the runs' logs as they are")
    args = parser.parse_args(argv)
    if args.jobs > 1:  # one torch thread pool per core at most: oversubscribed OpenMP threads spin-wait
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (args.jobs * args.nproc))))
    demo = Demo(parse_args(["--output-dir", str(args.output_dir), "--nproc", str(args.nproc), "--quiet"]))
    demo.size = replace(demo.size, batch_size=demo.size.batch_size * 2 // args.nproc)  # global batch as the demo's
    if not args.report:
        demo.prepare()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda fw: run_setting(demo, fw, train=not args.report), args.setting))
    print(
        "| inner lr, rank, layer fraction | steps | drop % | exact % ± stderr "
        f"| θ answer loss, last {TAIL} | outer loss, last {TAIL} | drop > 50% from step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        exact = f"{100 * r['exact']:.1f} ± {100 * r['stderr']:.1f}" if "exact" in r else "–"
        print(
            f"| {r['setting']} | {r['steps']} | {100 * r['drop']:.1f} | {exact} | {r['theta_loss_tail']:.3f} "
            f"| {r['outer_loss_tail']:.3f} | {r['onset'] or '–'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
