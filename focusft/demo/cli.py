"""``python -m focusft.demo`` (``focusft-demo``): Standard SFT vs FocuSFT on the tiny model, end to end.

Stages, each a subprocess with its own log in ``OUT/logs`` and reused on the next run:

1. ``base``: the tiny model and tokenizer (``python -m focusft.tiny``), or with ``--base pretrained``
   the shipped pre-trained one (``focusft/demo/base``, made once by ``focusft.demo.pretrain``);
2. ``data``: pre-training, training and held-out eval conversations (``focusft.demo.task``);
3. ``train_<variant>``: each variant from the same initial weights on the same data and steps
   (``tune run --nproc_per_node 2 recipes/focusft_distributed.py``);
4. ``eval_<variant>``: lm-eval on the held-out stories at every eval length, as a plain model,
   under both inference masks (causal; the prompt prefilled with the training mask);
5. ``attention_<length>_<row>``: ``focusft-attention`` of the base and every variant on the
   same eval conversations;

then the table (``results.md``/``results.json``) and plots, all in ``OUT``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from focusft.demo import plots, shipped_base
from focusft.demo.results import (
    Row,
    Speed,
    attention_means,
    eval_scores,
    inner_loss_drop,
    read_metrics,
    summary,
    write_results,
)
from focusft.demo.settings import DEFAULT_VARIANTS, DEMO_FAST_WEIGHTS, INFERENCE_MASKS, SIZES, VARIANTS, DemoSize
from focusft.demo.stages import MARKER, Stage, StageError, run_stage, stage_timing
from focusft.demo.task import PLACES

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/tiny/demo_cpu.yaml"
RECIPE = "recipes/focusft_distributed.py"  # tune run wants it relative to the repository root, its working dir
CHECKPOINT_FILE = "model-00001-of-00001.safetensors"  # what the recipe's HF checkpointer writes for the tiny model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="focusft-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="data and steps (default: default)")
    parser.add_argument("--steps", type=int, help="fine-tuning steps per variant (default: the size's)")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, or 'all' (default {','.join(DEFAULT_VARIANTS)}; all: {','.join(VARIANTS)})",
    )
    parser.add_argument("--output-dir", type=Path, help="default: outputs/demo/SIZE")
    parser.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    parser.add_argument(
        "--base",
        choices=["fresh", "pretrained"],
        default="fresh",
        help="fresh: the tiny model as focusft.tiny makes it (default); pretrained: the shipped "
        "focusft/demo/base (README, 'The demo': it has no attention sink, and SFT does not learn the task from it "
        "in 300 steps)",
    )
    parser.add_argument("--fresh", action="store_true", help="rebuild every stage instead of reusing finished ones")
    parser.add_argument("--quiet", action="store_true", help="keep stage output in the logs only")
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: unknown {unknown or 'empty'}; choose from {', '.join(VARIANTS)} or 'all'")
    for name in ("steps", "nproc"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    args.variant_names = names
    return args


class Demo:
    """The stages of one demo run over one output folder."""

    def __init__(self, args: argparse.Namespace) -> None:
        base = SIZES[args.size]
        self.size = DemoSize(**{**asdict(base), "steps": args.steps or base.steps})
        self.variants = [VARIANTS[name] for name in args.variant_names]
        self.nproc = args.nproc
        self.base = args.base
        self.echo = not args.quiet
        self.out = (args.output_dir or Path("outputs/demo") / args.size).resolve()
        self.logs = self.out / "logs"
        self.fast_weights = DEMO_FAST_WEIGHTS

    @property
    def global_batch(self) -> int:
        return self.size.batch_size * self.nproc

    def prepare(self) -> bool:
        """The ``base`` and ``data`` stages; returns whether either ran (then every later stage is rebuilt)."""
        size = self.size
        if self.base == "pretrained":
            make_base = [sys.executable, "-m", "focusft.demo.shipped_base", str(self.out / "base")]
            base_settings = {"sha256": shipped_base.fingerprint()}
        else:
            make_base, base_settings = [sys.executable, "-m", "focusft.tiny", str(self.out / "base")], {}
        base = self._stage("base", make_base, self.out / "base", base_settings)
        data = self.out / "data"
        data_ran = self._stage(
            "data",
            [
                *(sys.executable, "-m", "focusft.demo.task", str(data), "--tokenizer", str(self.out / "base")),
                *("--train", str(size.steps * self.global_batch), "--train-tokens", str(size.train_tokens)),
                *("--eval-samples", str(size.eval_samples), "--eval-tokens", *map(str, size.eval_tokens)),
                *("--persons", str(size.persons)),
            ],
            data,
            {"size": asdict(size), "global_batch": self.global_batch},
            force=base,
        )
        return base or data_ran

    def run(self) -> Path:
        size = self.size
        # A stage whose input was rebuilt in this run is rebuilt too.
        base = self.prepare()
        data = self.out / "data"
        checkpoints, trained = {}, {}
        for variant in self.variants:
            name = f"train_{variant.name}"
            # Fast weights only where they are used: a plain run's stage stays valid when they change.
            overrides = [*variant.overrides(), *(self.fast_weights.overrides() if variant.bilevel else [])]
            checkpoints[variant.name], trained[variant.name] = self._train(name, data / "train.jsonl", overrides, base)
        eval_files = {length: data / f"eval_{length}.jsonl" for length in size.eval_tokens}
        for name, checkpoint in checkpoints.items():
            self._stage(
                f"eval_{name}",
                [
                    *(sys.executable, "-m", "focusft.demo.evaluate", str(checkpoint), "--label", name),
                    *("--output-dir", str(self.out / "eval" / name), "--attention", *INFERENCE_MASKS),
                    *(arg for length, path in eval_files.items() for arg in ("--data", f"{length}={path}")),
                ],
                self.out / "eval" / name,
                {"checkpoint": str(checkpoint), "size": asdict(size)},
                force=trained[name],
            )
        reports = {length: [] for length in size.eval_tokens}
        measured = {"base": self.out / "base", **checkpoints}
        for length, path in eval_files.items():
            for row in range(size.attention_rows):
                output = self.out / "attention" / f"{length}_row{row}"
                self._stage(
                    f"attention_{length}_row{row}",
                    [
                        *(sys.executable, "-m", "focusft.analysis.cli", *map(str, measured.values())),
                        *(arg for name in measured for arg in ("--label", name)),
                        *("--data", str(path), "--row", str(row), "--output-dir", str(output), "--device", "cpu"),
                    ],
                    output,
                    {"checkpoints": {k: str(v) for k, v in measured.items()}, "size": asdict(size)},
                    force=base or any(trained.values()),
                )
                reports[length].append(output / "report.json")
        return self._report(checkpoints, reports, trained)

    def _stage(self, name: str, command: list[str], output: Path, settings: dict, force: bool = False) -> bool:
        stage = Stage(name, command, output, {"command": command, **settings}, cwd=REPO)
        return run_stage(stage, self.logs, echo=self.echo, force=force)

    def _train(self, name: str, data: Path, overrides: list[str], force: bool) -> tuple[Path, bool]:
        """A ``tune run`` of the recipe from the tiny base model; returns its final checkpoint and whether it ran."""
        output = self.out / "runs" / name
        command = [
            *(str(Path(sys.executable).parent / "tune"), "run", "--nproc_per_node", str(self.nproc), RECIPE),
            *(
                "--config",
                str(CONFIG),
                f"base_dir={self.out / 'base'}",
                f"output_dir={output}",
                f"dataset.data_files={data}",
            ),
            f"batch_size={self.size.batch_size}",
            f"max_steps_per_epoch={self.size.steps}",
            *overrides,
        ]
        ran = self._stage(name, command, output, {}, force=force)
        return output / "epoch_0", ran

    def _report(self, checkpoints: dict[str, Path], reports: dict[int, list[Path]], trained: dict[str, bool]) -> Path:
        titles = {name: VARIANTS[name].title for name in checkpoints}
        attention = {length: attention_means(paths) for length, paths in reports.items()}
        curves = {
            name: read_metrics(self.out / "runs" / f"train_{name}" / "logs" / "metrics.txt") for name in checkpoints
        }
        rows = []
        for name in checkpoints:
            speed = Speed.from_metrics(curves[name], self.nproc)
            causal = eval_scores(self.out / "eval" / name / "causal")
            bidir = eval_scores(self.out / "eval" / name / "bidir_context")
            for length, (accuracy, stderr, answered, samples) in causal.items():
                figures = attention[length][name]
                rows.append(
                    Row(
                        variant=name,
                        length=length,
                        accuracy=accuracy,
                        stderr=stderr,
                        answered_place=answered,
                        samples=samples,
                        bidir_accuracy=bidir[length][0],
                        bidir_stderr=bidir[length][1],
                        sink_mass=figures["sink_mass"],
                        context_engagement=figures["context_engagement"],
                        step_seconds=speed.step_seconds,
                        tokens_per_second=speed.tokens_per_second,
                        speed_reused=not trained[name],
                    )
                )
        base = {
            length: {key: attention[length]["base"][key] for key in ("sink_mass", "context_engagement")}
            for length in attention
        }
        drops = {name: inner_loss_drop(curves[name]) for name in checkpoints}
        figures = summary(rows, titles, base, drops)
        md, _ = write_results(self.out, rows, titles, self._notes(base, drops, titles), figures)
        plots.loss_curves(self.out / "loss_curves.png", {titles[n]: curves[n] for n in checkpoints})
        plots.accuracy_by_length(self.out / "accuracy_by_length.png", rows, titles, chance=1 / len(PLACES))
        shortest = self.size.eval_tokens[0]
        budgets = {"Base": attention[shortest]["base"]} | {titles[n]: attention[shortest][n] for n in checkpoints}
        plots.attention_budget(self.out / "attention_budget.png", budgets, shortest)
        print(md.read_text())
        return self.out

    def _notes(
        self, base: dict[int, dict[str, float]], drops: dict[str, float | None], titles: dict[str, str]
    ) -> list[str]:
        fw, size = self.fast_weights, self.size
        notes = [
            (
                "Base: the shipped pre-trained tiny model (focusft/demo/base)"
                if self.base == "pretrained"
                else "Base: the tiny model as focusft.tiny makes it (4 layers, dim 64, random initialisation)"
            )
            + f", {self.nproc} CPU processes; "
            f"{size.steps} fine-tuning steps per variant from it, global batch {self.global_batch}, "
            f"training conversations of ≤ {size.train_tokens} tokens.",
            "Base attention (causal, answer tokens): "
            + ", ".join(
                f"sink mass {100 * f['sink_mass']:.1f}% and context engagement {100 * f['context_engagement']:.1f}% "
                f"at {length} tokens"
                for length, f in base.items()
            )
            + ".",
            f"Fast weights (bilevel variants): rank {fw.rank}, alpha {fw.alpha:g}, inner lr {fw.inner_lr:.3g}, "
            f"top {100 * fw.layer_fraction:.0f}% of layers.",
            f"Exact match on {size.eval_samples} held-out stories per length, answered as plain models "
            "(no fast weights), greedy; causal: the prompt read causally, as the paper evaluates; bidir prefill: "
            "the prompt prefilled with the training mask (its context turns bidirectional), the answer causal. "
            f"Guessing one of the {len(PLACES)} places scores {100 / len(PLACES):.0f}%"
            + (f", one of the story's {size.persons} {100 / size.persons:.0f}%." if size.persons > 1 else "."),
            f"Attention (causal, as at inference): mean over {size.attention_rows} eval conversation(s) per length.",
        ]
        if any(drop is not None for drop in drops.values()):
            notes.append(
                "Inner loop: the K inner steps lowered the answer loss by "
                + ", ".join(f"{100 * drop:.1f}% ({titles[n]})" for n, drop in drops.items() if drop is not None)
                + " on average over training (metric log: inner_loss_before_0 vs the last inner_loss_after)."
            )
        times = []
        for marker in sorted(self.out.rglob(MARKER), key=lambda path: path.stat().st_mtime):
            timing = stage_timing(marker.parent)
            # A checkpoint folder carries copies of the base's files, marker included: not a stage.
            nested = any((parent / MARKER).is_file() for parent in marker.parent.parents if self.out in parent.parents)
            if timing is not None and not nested:
                times.append(
                    f"{marker.parent.relative_to(self.out)} {timing['seconds']:.0f} s wall, "
                    f"{timing.get('cpu_seconds', 0):.0f} s CPU (finished {timing['finished']}, "
                    f"load {timing['load_average']:g})"
                )
        if times:
            notes.append(
                "Stage wall times (stages reused from an earlier run keep that run's time and load): "
                + "; ".join(times)
                + "."
            )
        return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    demo = Demo(args)
    if args.fresh and demo.out.exists():
        shutil.rmtree(demo.out)
    try:
        out = demo.run()
    except StageError as err:
        print(f"focusft-demo: error: {err}", file=sys.stderr)
        return 1
    print(f"Demo results (table, plots, logs) in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
