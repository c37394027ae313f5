"""``focusft-agent-eval``: GPQA-style multiple choice solved by multi-turn tool-use rollouts.

    focusft-agent-eval CHECKPOINT --data gpqa_diamond.csv [--rollouts 32] [--max-turns 16]
        [--temperature 1.0] [--top-p 0.6] [--seed 0] [--output-dir DIR]

The paper's setting (Appendix A) is the default: 32 rollouts per problem, up to 16 assistant
turns, temperature 1.0, top-p 0.6, pass@1 by majority vote and pass@32 by oracle. Generation
goes through vLLM when it is installed and a GPU is present, else through transformers;
``--backend script --script FILE`` replays fixed responses (tests, dry runs).

Output in ``--output-dir`` (default ``eval_results/<checkpoint name>-agent``):
``transcripts.jsonl`` (one finished rollout a line), ``settings.json``, ``results.json`` and
``results.md``. Running the same command again resumes: finished rollouts are kept, only the
rest run. Errors print one line ``focusft-agent-eval: error: ...`` and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from focusft.agent.generation import (
    Generator,
    SamplingSettings,
    ScriptedGenerator,
    TransformersGenerator,
    VLLMGenerator,
    vllm_available,
)
from focusft.agent.gpqa import GPQADataError, load_problems
from focusft.agent.rollout import RolloutSettings, pending_episodes, read_transcripts, run_episodes
from focusft.agent.sandbox import SandboxLimits, run_python
from focusft.agent.scoring import score_problems, summarize

PROG = "focusft-agent-eval"


class AgentEvalError(ValueError):
    """Bad input, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="HF-format checkpoint directory (epoch_N/, step_K/, a Qwen2.5 download).")
    parser.add_argument("--data", required=True, help="GPQA-format CSV (official columns) or JSONL.")
    parser.add_argument("--output-dir", help="Where transcripts and results go (default eval_results/NAME-agent).")
    parser.add_argument("--rollouts", type=int, default=32, help="Rollouts per problem (paper: 32).")
    parser.add_argument("--max-turns", type=int, default=16, help="Assistant turns per rollout at most (paper: 16).")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (paper: 1.0).")
    parser.add_argument("--top-p", type=float, default=0.6, help="Nucleus sampling (paper: 0.6).")
    parser.add_argument("--max-new-tokens", type=int, default=2048, help="Tokens per assistant turn at most.")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the sampling and the choice order.")
    parser.add_argument("--limit", type=int, help="Only the first N problems.")
    parser.add_argument("--batch-size", type=int, default=16, help="Rollouts generated together.")
    parser.add_argument(
        "--backend", choices=("auto", "vllm", "transformers", "script"), default="auto", help="auto: vLLM on a GPU."
    )
    parser.add_argument("--script", help="With --backend script: JSON {problem_id or '*': [turn texts]}.")
    parser.add_argument("--device", help="transformers backend: cpu, cuda, cuda:1 (default: the GPU if any).")
    parser.add_argument("--dtype", default="auto", help="transformers backend: auto, bfloat16, float32.")
    parser.add_argument("--tool-timeout", type=float, default=30.0, help="Wall seconds per tool call.")
    parser.add_argument("--tool-memory-mib", type=int, default=2048, help="Memory per tool call (MiB).")
    parser.add_argument(
        "--pass-k", default="8,32", help="k values of pass@k (2 <= k <= --rollouts; k = --rollouts is always reported)."
    )
    return parser


def _check(args: argparse.Namespace) -> Path:
    for name in ("rollouts", "max_turns", "max_new_tokens", "batch_size", "tool_memory_mib"):
        if getattr(args, name) < 1:
            raise AgentEvalError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise AgentEvalError(f"--limit must be at least 1, got {args.limit}")
    if not 0.0 < args.top_p <= 1.0 or args.temperature < 0:
        raise AgentEvalError("--top-p must be in (0, 1] and --temperature at least 0")
    if args.tool_timeout <= 0:
        raise AgentEvalError("--tool-timeout must be positive")
    if args.backend == "script" and not args.script:
        raise AgentEvalError("--backend script needs --script FILE")
    if args.backend != "script" and not (Path(args.checkpoint) / "config.json").is_file():
        raise AgentEvalError(f"{args.checkpoint} is not an HF checkpoint directory (no config.json)")
    if args.backend == "vllm" and not vllm_available():
        raise AgentEvalError("--backend vllm needs the vllm package and a GPU; use --backend transformers")
    try:
        ks = [int(k) for k in args.pass_k.split(",") if k.strip()]
    except ValueError:
        raise AgentEvalError(f"--pass-k takes comma-separated integers, got {args.pass_k!r}") from None
    args.ks = sorted(set(ks) | {args.rollouts})  # pass@rollouts (the oracle) always
    output = Path(args.output_dir or Path("eval_results") / f"{Path(args.checkpoint).resolve().name}-agent")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise AgentEvalError(f"cannot write to --output-dir {output}: {error.strerror or error}") from None
    return output


def _settings_record(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("checkpoint", "data", "rollouts", "max_turns", "temperature", "top_p", "max_new_tokens", "seed", "limit")
    record = {key: getattr(args, key) for key in keys}
    record["checkpoint"] = str(Path(args.checkpoint).resolve())
    record["data"] = str(Path(args.data).resolve())
    return record


def _check_resume(output: Path, settings: dict[str, Any]) -> None:
    """A resumed run must ask the same question the same way; anything else would mix two runs."""
    path = output / "settings.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            saved = None
        if saved != settings:
            changed = sorted(k for k in settings if not isinstance(saved, dict) or saved.get(k) != settings[k])
            raise AgentEvalError(
                f"{output} holds a run with other settings ({', '.join(changed) or 'unreadable settings.json'}); "
                "use another --output-dir or the same arguments to resume it"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _generator(args: argparse.Namespace, sampling: SamplingSettings) -> Generator:
    if args.backend == "script":
        try:
            return ScriptedGenerator.from_file(args.script)
        except (OSError, ValueError) as error:
            raise AgentEvalError(f"cannot read --script {args.script}: {error}") from None
    if args.backend == "vllm" or (args.backend == "auto" and vllm_available()):
        return VLLMGenerator(args.checkpoint, sampling)
    return TransformersGenerator(args.checkpoint, sampling, device=args.device, dtype=args.dtype)


def results_markdown(summary: dict[str, float], settings: dict[str, Any]) -> str:
    rows = [f"| {name} | {value:.1f} |" for name, value in summary.items() if name != "problems"]
    return "\n".join(
        [
            f"# Agentic multiple choice: {Path(settings['checkpoint']).name}",
            "",
            f"{int(summary['problems'])} problems × {settings['rollouts']} rollouts, up to {settings['max_turns']} "
            f"assistant turns, temperature {settings['temperature']}, top-p {settings['top_p']}, "
            f"seed {settings['seed']}.",
            "pass@1 is by majority vote over the rollouts; pass@k for k > 1 is the unbiased estimator "
            "(at k = rollouts: solved by any rollout).",
            "",
            "| metric | % |",
            "|---|---|",
            *rows,
            "",
        ]
    )


def evaluate(args: argparse.Namespace) -> dict[str, float]:
    output = _check(args)
    try:
        problems = load_problems(args.data, seed=args.seed)
    except GPQADataError as error:
        raise AgentEvalError(str(error)) from None
    problems = problems[: args.limit] if args.limit else problems
    settings = _settings_record(args)
    _check_resume(output, settings)
    transcript = output / "transcripts.jsonl"
    ids = {p.id for p in problems}
    done = [r for r in read_transcripts(transcript) if r.get("problem_id") in ids]
    rollouts = RolloutSettings(args.rollouts, args.max_turns, args.seed, args.batch_size)
    todo = pending_episodes(problems, rollouts, {(r["problem_id"], r["rollout"]) for r in done})
    if todo:
        sampling = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens)
        limits = SandboxLimits(
            wall_seconds=args.tool_timeout, cpu_seconds=max(1, int(args.tool_timeout)), memory_mib=args.tool_memory_mib
        )
        generator = _generator(args, sampling)
        total = len(problems) * args.rollouts
        with tqdm(total=total, initial=total - len(todo), desc="rollouts", unit="rollout") as progress:
            run_episodes(
                todo,
                generator,
                lambda code: run_python(code, limits),
                rollouts,
                transcript,
                lambda r: progress.update(),
            )
        done = [r for r in read_transcripts(transcript) if r.get("problem_id") in ids]
    answers: dict[str, list[str | None]] = {p.id: [None] * args.rollouts for p in problems}
    for record in done:
        answers[record["problem_id"]][record["rollout"]] = record["response_answer"]
    summary = summarize(score_problems(answers, {p.id: p.answer for p in problems}), args.ks)
    (output / "results.json").write_text(json.dumps({"settings": settings, "scores": summary}, indent=2) + "\n")
    (output / "results.md").write_text(results_markdown(summary, settings), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        summary = evaluate(args)
    except AgentEvalError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(" ".join(f"{name}={value:.1f}" for name, value in summary.items()))


if __name__ == "__main__":
    main()
