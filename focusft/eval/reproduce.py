"""``focusft-reproduce``: one command from the four variants' checkpoints to the paper's tables.

    focusft-reproduce --checkpoint sft=DIR --checkpoint focusft=DIR [--checkpoint sft_bidir=DIR]
        [--checkpoint causal_bilevel=DIR] --gpqa gpqa_diamond.csv [--suite paper|offline]
        [--output-dir outputs/reproduce]

For every checkpoint it runs the long-context suite (``focusft-eval --suite``: BABILong
4K-32K, RULER NIAH-MV/CWE/VT 4K-16K, LongBench QA; lm-eval's zero-shot GPQA is left out)
and the agentic GPQA rollouts (``focusft-agent-eval``), then writes ``tables.md`` (paper
Tables 1, 2, 3 and B.1 with the paper's rows beside this run's), ``figure4.png`` and
``tables.json``. Each evaluation is a stage with its own log in ``logs/``; a stage that
finished with the same settings is reused, and the GPQA rollouts resume where a killed run
stopped. ``--suite offline`` runs without the hub: the bundled synthetic tasks stand in for
BABILong (say so in every table), RULER and LongBench read "not run".
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from focusft.demo.stages import Stage, StageError, run_stage
from focusft.eval.paper_tables import VARIANTS, all_tables, figure4
from focusft.eval.report import load_report

PROG = "focusft-reproduce"
PAPER_TASKS = (
    "babilong_qa1,babilong_qa2,babilong_qa3,babilong_qa4,babilong_qa5,niah_multivalue,ruler_cwe,ruler_vt,"
    "longbench_hotpotqa,longbench_multifieldqa_en,longbench_narrativeqa,longbench_qasper"
)


class ReproduceError(ValueError):
    """Bad input, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="VARIANT=DIR",
        help=f"A variant's checkpoint; VARIANT is one of {', '.join(VARIANTS)}. Repeat for each.",
    )
    parser.add_argument("--gpqa", help="GPQA-format CSV/JSONL for the agentic evaluation (without it: not run).")
    parser.add_argument("--suite", choices=("paper", "offline"), default="paper")
    parser.add_argument("--output-dir", default="outputs/reproduce")
    parser.add_argument("--limit", type=float, help="lm-eval --limit per task (a quick look, not the paper's n).")
    parser.add_argument("--lengths", help="Offline suite lengths, e.g. 512,1k (default: all).")
    parser.add_argument("--num-samples", type=int, help="Offline suite: samples per task.")
    parser.add_argument("--eval-args", default="", help="More focusft-eval --suite arguments, quoted.")
    parser.add_argument("--agent-args", default="", help="More focusft-agent-eval arguments, e.g. '--rollouts 8'.")
    return parser


def _checkpoints(specs: list[str]) -> dict[str, Path]:
    checkpoints: dict[str, Path] = {}
    for spec in specs:
        variant, sep, directory = spec.partition("=")
        if not sep or variant not in VARIANTS:
            raise ReproduceError(
                f"--checkpoint {spec!r}: expected VARIANT=DIR with VARIANT one of {', '.join(VARIANTS)}"
            )
        if variant in checkpoints:
            raise ReproduceError(f"--checkpoint names {variant} twice")
        path = Path(directory)
        if not (path / "config.json").is_file():
            raise ReproduceError(f"--checkpoint {variant}={directory}: not an HF checkpoint directory (no config.json)")
        checkpoints[variant] = path.resolve()
    return {variant: checkpoints[variant] for variant in VARIANTS if variant in checkpoints}


def _suite_stage(args: argparse.Namespace, variant: str, checkpoint: Path, out: Path) -> Stage:
    output = out / variant / f"{args.suite}_suite"
    command = [sys.executable, "-m", "focusft.eval.cli", "--suite", args.suite, "--checkpoint_dir", str(checkpoint)]
    command += ["--label", VARIANTS[variant], "--output_dir", str(output)]
    if args.suite == "paper":
        command += ["--tasks", PAPER_TASKS]
    for flag, value in (("--limit", args.limit), ("--lengths", args.lengths), ("--num_samples", args.num_samples)):
        if value is not None:
            command += [flag, str(value)]
    command += shlex.split(args.eval_args)
    return Stage(f"eval_{variant}", command, output, {"command": command})


def _agent_stage(args: argparse.Namespace, variant: str, checkpoint: Path, out: Path) -> Stage:
    results = out / variant / "agent"
    command = [sys.executable, "-m", "focusft.agent.cli", str(checkpoint), "--data", str(Path(args.gpqa).resolve())]
    command += ["--output-dir", str(results), *shlex.split(args.agent_args)]
    # The stage's marker lives apart from the rollouts, so an unfinished run is resumed, not wiped.
    return Stage(f"agent_{variant}", command, out / variant / "agent_stage", {"command": command})


def reproduce(args: argparse.Namespace) -> Path:
    checkpoints = _checkpoints(args.checkpoint)
    if args.gpqa and not Path(args.gpqa).is_file():
        raise ReproduceError(f"--gpqa {args.gpqa} does not exist")
    if args.suite == "paper" and (args.lengths or args.num_samples):
        raise ReproduceError("--lengths and --num-samples apply to --suite offline only")
    out = Path(args.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReproduceError(f"cannot create --output-dir {out}: {error.strerror or error}") from None
    reports, gpqa = {}, {}
    for variant, checkpoint in checkpoints.items():
        stage = _suite_stage(args, variant, checkpoint, out)
        run_stage(stage, out / "logs", program=PROG)
        reports[variant] = load_report(stage.output)
        if args.gpqa:
            run_stage(_agent_stage(args, variant, checkpoint, out), out / "logs", program=PROG)
            gpqa[variant] = json.loads((out / variant / "agent" / "results.json").read_text())["scores"]
    meta = {"suite": args.suite, "checkpoints": {v: str(p) for v, p in checkpoints.items()}}
    (out / "tables.md").write_text(all_tables(reports, gpqa, meta), encoding="utf-8")
    figure4(reports, out / "figure4.png")
    summary = {"meta": meta, "reports": {v: r.to_json() for v, r in reports.items()}, "gpqa": gpqa}
    (out / "tables.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        out = reproduce(args)
    except (ReproduceError, StageError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"Wrote {out / 'tables.md'}, {out / 'figure4.png'} and {out / 'tables.json'}")


if __name__ == "__main__":
    main()
