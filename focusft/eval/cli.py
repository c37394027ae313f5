"""``focusft-eval``: lm-eval's CLI with this project's model and tasks, plus suites and comparison tables.

    focusft-eval --model focusft --model_args checkpoint_dir=DIR --tasks TASKS [lm-eval flags]
    focusft-eval --suite {offline,paper} --checkpoint_dir DIR [--backend focusft|hf|vllm] [...]
    focusft-eval --compare REPORT REPORT [...] [--reference]

Without ``--suite`` or ``--compare`` the arguments go to lm-eval's own CLI
(``lm-eval run``, ``ls``, ``validate``), after registering the ``focusft`` model
and putting the bundled offline tasks on lm-eval's include path; its flags:
``focusft-eval run --help``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from focusft.eval.errors import EvalError
from focusft.eval.report import load_report, markdown_table
from focusft.eval.runner import evaluate_suite, fetch_suite, first_line, is_network_error
from focusft.eval.suites import TASKS_DIR, offline_suite, paper_suite
from focusft.run_guard import unwritable_reason

USAGE_ERROR_EXIT_CODE = 2  # as argparse: the command cannot run as given

BACKENDS = {"focusft": "checkpoint_dir", "hf": "pretrained", "vllm": "pretrained"}


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def _suite_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focusft-eval --suite", description="Run a task suite on one checkpoint.")
    parser.add_argument("--suite", required=True, choices=("offline", "paper"))
    parser.add_argument("--checkpoint_dir", required=True, help="HF-format checkpoint directory (epoch_N/, step_K/).")
    parser.add_argument(
        "--backend", default="focusft", choices=sorted(BACKENDS), help="lm-eval model (default focusft)."
    )
    parser.add_argument("--model_args", default="", help="Extra model args, 'key=value,key2=value2'.")
    parser.add_argument("--tasks", help="Comma-separated subset of the suite's tasks (offline: qa1..qa5, tool).")
    parser.add_argument("--lengths", help="Offline suite lengths, e.g. '512,1k,2k' (default: all, 512 to 16k).")
    parser.add_argument("--num_samples", type=int, help="Offline suite: samples generated per task (default 100).")
    parser.add_argument("--limit", type=float, help="Evaluate only this many samples per task (lm-eval --limit).")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: the GPU when present).")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), bfloat16, float16, float32.")
    parser.add_argument("--apply_chat_template", action="store_true", help="Paper suite: use the chat template.")
    parser.add_argument("--label", help="Name of this checkpoint in tables (default: its directory name).")
    parser.add_argument("--output_dir", help="Where report.md/json go (default: eval_results/LABEL-SUITE).")
    parser.add_argument("--reference", action="store_true", help="Add the paper's numbers to report.md.")
    parser.add_argument(
        "--log_samples", action="store_true", help="Write every scored sample to lm_eval/<run>_samples_<task>.jsonl."
    )
    return parser


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focusft-eval --compare", description="Side-by-side table of reports; Δ rows are against the first."
    )
    parser.add_argument(
        "--compare", nargs="+", required=True, metavar="REPORT", help="report.json, its dir, or lm-eval results JSON."
    )
    parser.add_argument("--labels", help="Comma-separated names for the reports (default: their own labels).")
    parser.add_argument("--reference", action="store_true", help="Add the paper's published numbers as rows.")
    parser.add_argument("--output_dir", help="Also write comparison.md and comparison.json there.")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``-h``/``--help`` anywhere prints the help and exits 0, even where a flag lacks its value (``--compare -h``)."""
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        raise SystemExit(0)
    return parser.parse_args(argv)


def _help() -> str:
    """The top-level help: the three forms, then every flag of the suite and compare forms."""
    return "\n".join([__doc__.strip(), "", _suite_parser().format_help(), _compare_parser().format_help()])


def run_suite_command(argv: list[str]) -> int:
    args = _parse(_suite_parser(), argv)
    from lm_eval.api.registry import get_model
    from lm_eval.utils import simple_parse_args_string

    import focusft.eval  # noqa: F401  (registers the focusft model)

    if args.suite == "offline" and args.apply_chat_template:
        raise EvalError(
            "The offline suite's prompts are already in the Qwen2.5 chat format; drop --apply_chat_template."
        )
    if args.suite == "paper" and (args.lengths or args.num_samples is not None):
        raise EvalError("--lengths and --num_samples apply to the offline suite only.")
    if args.num_samples is not None and args.num_samples < 1:
        raise EvalError(f"--num_samples must be at least 1, got {args.num_samples}.")
    checkpoint_dir = str(Path(args.checkpoint_dir).resolve())
    label = args.label or Path(checkpoint_dir).name
    model_args = {BACKENDS[args.backend]: args.checkpoint_dir, "dtype": args.dtype}
    model_args.update(simple_parse_args_string(args.model_args))
    only = set(_csv(args.tasks) or [])
    if args.suite == "offline":
        runs = offline_suite(_csv(args.lengths), only, args.num_samples)
    else:
        runs = paper_suite(str(model_args.get("tokenizer") or checkpoint_dir), only)
    output_dir = _writable(args.output_dir or f"eval_results/{label}-{args.suite}")  # before data and model
    loaded = fetch_suite(runs, model_args)  # before the model: a suite that cannot run fails fast
    lm = get_model(args.backend).create_from_arg_obj(model_args, {"batch_size": args.batch_size, "device": args.device})
    report = evaluate_suite(
        loaded,
        lm,
        label=label,
        output_dir=output_dir,
        meta={
            "suite": args.suite,
            "backend": args.backend,
            "checkpoint_dir": checkpoint_dir,
            "command": shlex.join(["focusft-eval", *argv]),
        },
        limit=args.limit,
        apply_chat_template=args.apply_chat_template,
        reference=args.reference,
        log_samples=args.log_samples,
    )
    print(markdown_table([report], reference=args.reference))
    print(f"Wrote {output_dir / 'report.md'} and {output_dir / 'report.json'}")
    return 0


def run_compare_command(argv: list[str]) -> int:
    args = _parse(_compare_parser(), argv)
    labels = _csv(args.labels) or []
    out = _writable(args.output_dir) if args.output_dir else None
    if labels and len(labels) != len(args.compare):
        raise EvalError(f"--labels names {len(labels)} reports but --compare has {len(args.compare)}.")
    reports = [load_report(path, labels[i] if labels else None) for i, path in enumerate(args.compare)]
    table = markdown_table(reports, reference=args.reference)
    print(table)
    if out is not None:
        (out / "comparison.md").write_text("# Comparison\n\n" + table)
        (out / "comparison.json").write_text(json.dumps([r.to_json() for r in reports], indent=2))
        print(f"Wrote {out / 'comparison.md'} and {out / 'comparison.json'}")
    return 0


def _writable(path: str) -> Path:
    """``--output_dir`` as a folder files can be written to (created if missing), checked before any work."""
    reason = unwritable_reason(Path(path))
    if reason is not None:
        raise EvalError(f"--output_dir {reason}.")
    return Path(path)


def run_lm_eval(argv: list[str]) -> int:
    """lm-eval's CLI, with the focusft model registered and the bundled tasks on the include path."""
    from lm_eval.__main__ import cli_evaluate

    import focusft.eval  # noqa: F401  (registers the focusft model)

    if not any(arg == "--include_path" or arg.startswith("--include_path=") for arg in argv):
        argv = [*argv, "--include_path", str(TASKS_DIR)]
    sys.argv = ["focusft-eval", *argv]
    cli_evaluate()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in ([], ["-h"], ["--help"]):
        print(_help())
        return 0
    if "--suite" in argv or any(arg.startswith("--suite=") for arg in argv):
        command = run_suite_command
    elif "--compare" in argv:
        command = run_compare_command
    else:
        command = run_lm_eval
    try:
        return command(argv)
    except (EvalError, FileNotFoundError) as err:
        print(f"focusft-eval: error: {err}", file=sys.stderr)
    except ValueError as err:
        if not str(err).startswith("Tasks not found"):  # lm-eval's CLI on an unknown task name
            raise
        print(f"focusft-eval: error: {err} (list them with: focusft-eval ls tasks)", file=sys.stderr)
    except Exception as err:
        if not is_network_error(err):
            raise
        print(
            f"focusft-eval: error: a task needs network access to download its data: {first_line(err)}", file=sys.stderr
        )
    return USAGE_ERROR_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
