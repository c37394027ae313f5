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
answer loss (``inner_loss_before_0``) and the outer loss, both as means over the last 50 steps.
A drop at θ at the start of training (``benchmarks/inner_loop_sweep.py``) does not predict
either figure; hence a full run per setting. ``--nproc 1`` trains on one process with the
per-process batch doubled, so the global batch (16) and the data stay the demo's; ``--jobs``
runs that many settings at once.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from statistics import mean

from focusft.demo.cli import Demo, parse_args
from focusft.demo.results import eval_scores, inner_loss_drop, read_metrics
from focusft.demo.settings import VARIANTS, FastWeightScale
from focusft.demo.stages import StageError

TAIL = 50  # steps at the end of training over which θ's and the outer loss are averaged


def setting(text: str) -> FastWeightScale:
    """``INNER_LR,RANK,LAYER_FRACTION`` with alpha = 2 × rank, the demo's LoRA scale."""
    try:
        lr, rank, fraction = text.split(",")
        return FastWeightScale(
            rank=int(rank), alpha=2.0 * int(rank), inner_lr=float(lr), layer_fraction=float(fraction)
        )
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected INNER_LR,RANK,LAYER_FRACTION, got {text!r}") from err


def tag(fw: FastWeightScale) -> str:
    return f"lr{fw.inner_lr:g}_r{fw.rank}_f{fw.layer_fraction:g}"


def stopped(demo: Demo, fw: FastWeightScale) -> dict[str, float | str | None]:
    """The row of a run that did not finish: the drop over its logged steps, no exact match."""
    rows = read_metrics(demo.out / "runs" / f"train_{tag(fw)}" / "logs" / "metrics.txt")
    return {"setting": f"{tag(fw)} (stopped at step {len(rows)})", "drop": inner_loss_drop(rows), "rows": rows}


def run_setting(demo: Demo, fw: FastWeightScale) -> dict[str, float | str | None]:
    """Train FocuSFT with ``fw``, score it at the training length; the figures of one table row."""
    data = demo.out / "data"
    length = demo.size.eval_tokens[0]
    overrides = [*VARIANTS["focusft"].overrides(), *fw.overrides()]
    try:
        checkpoint, _ = demo._train(f"train_{tag(fw)}", data / "train.jsonl", overrides, force=False)
    except StageError as err:  # stopped by hand (a hopeless setting) or failed: the figures so far
        print(f"focusft-sweep: {err}", flush=True)
        return stopped(demo, fw)
    eval_dir = demo.out / "eval" / tag(fw)
    demo._stage(
        f"eval_{tag(fw)}",
        [
            *(sys.executable, "-m", "focusft.demo.evaluate", str(checkpoint), "--label", tag(fw)),
            *("--output-dir", str(eval_dir), "--attention", "causal", "--data", f"{length}={data}/eval_{length}.jsonl"),
        ],
        eval_dir,
        {"checkpoint": str(checkpoint), "length": length},
    )
    rows = read_metrics(demo.out / "runs" / f"train_{tag(fw)}" / "logs" / "metrics.txt")
    tail = rows[-TAIL:]
    accuracy, stderr, _, samples = eval_scores(eval_dir / "causal")[length]
    return {
        "setting": tag(fw),
        "drop": inner_loss_drop(rows),
        "first_half_drop": inner_loss_drop(rows[: len(rows) // 2]),
        "last_half_drop": inner_loss_drop(rows[len(rows) // 2 :]),
        "exact": accuracy,
        "stderr": stderr,
        "samples": samples,
        "theta_loss_tail": mean(r["inner_loss_before_0"] for r in tail),
        "outer_loss_tail": mean(r["loss"] for r in tail),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", type=setting, action="append", required=True, help="INNER_LR,RANK,LAYER_FRACTION")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fw_sweep"))
    parser.add_argument("--nproc", type=int, default=2, help="training processes per run (default 2, as the demo)")
    parser.add_argument("--jobs", type=int, default=1, help="settings trained at once")
    args = parser.parse_args(argv)
    demo = Demo(parse_args(["--output-dir", str(args.output_dir), "--nproc", str(args.nproc), "--quiet"]))
    demo.size = replace(demo.size, batch_size=demo.size.batch_size * 2 // args.nproc)  # global batch as the demo's
    demo.prepare()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda fw: run_setting(demo, fw), args.setting))
    print("| inner lr, rank, layer fraction | drop % (all / first half / last half) | exact % ± stderr "
          f"| θ answer loss, last {TAIL} | outer loss, last {TAIL} |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for r in results:
        if "exact" not in r:
            print(f"| {r['setting']} | {100 * r['drop']:.1f} | – | – | – |", flush=True)
            continue
        print(
            f"| {r['setting']} | {100 * r['drop']:.1f} / {100 * r['first_half_drop']:.1f} / "
            f"{100 * r['last_half_drop']:.1f} | {100 * r['exact']:.1f} ± {100 * r['stderr']:.1f} "
            f"| {r['theta_loss_tail']:.3f} | {r['outer_loss_tail']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
