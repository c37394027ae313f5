"""lm-eval on the demo's held-out stories: one run of the ``focusft_demo`` task per length.

    python -m focusft.demo.evaluate CHECKPOINT --data 256=eval_256.jsonl --data 512=eval_512.jsonl \\
        --label sft --output-dir DIR --attention causal bidir_context

The task (``focusft/eval/tasks/demo``) reads the JSON Lines file named in its metadata, so the
scores are of exactly the conversations the demo wrote (and the attention report reads).
Scores, with lm-eval's standard errors, go to ``DIR/MASK/report.json`` like any ``focusft-eval``
suite, one folder per inference mask (``attention`` of the ``focusft`` backend: ``causal``, or
``bidir_context``, the prompt prefilled with the training mask).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import datasets

from focusft.demo.task import PLACES
from focusft.eval.offline import normalize_answer, render_prompt
from focusft.eval.suites import EvalRun
from focusft.masks import MASK_MODES

DEMO_TASK = "focusft_demo"


def build_dataset(data_file: str, **_: Any) -> dict[str, datasets.Dataset]:
    """lm-eval ``custom_dataset`` hook: the file's conversations as chat-format prompts and answers."""
    rows = []
    with open(data_file, encoding="utf-8") as handle:
        for line in handle:
            sample = json.loads(line)
            rows.append({"prompt": render_prompt(sample["messages"]), "answer": sample["answer"]})
    return {"test": datasets.Dataset.from_list(rows)}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match (case, spaces and punctuation aside), and whether the answer is a place at all."""
    answer = normalize_answer(results[0])
    return {"exact_match": float(answer == normalize_answer(doc["answer"])), "answered_place": float(answer in PLACES)}


def demo_runs(data_files: dict[str, Path]) -> list[EvalRun]:
    """One lm-eval run per length label; the label travels as ``max_seq_lengths`` into the report."""
    return [
        EvalRun(f"demo_{label}", (DEMO_TASK,), {"data_file": str(path), "max_seq_lengths": label}, builtin=False)
        for label, path in data_files.items()
    ]


def evaluate(
    checkpoint: Path, data_files: dict[str, Path], label: str, output_dir: Path, batch_size: int, attention: str
) -> Path:
    """Score ``checkpoint`` as a plain model (no fast weights) on every file; returns the report path."""
    from lm_eval.api.registry import get_model

    import focusft.eval  # noqa: F401  (registers the focusft model)
    from focusft.eval.runner import evaluate_suite, fetch_suite

    model_args = {"checkpoint_dir": str(checkpoint), "dtype": "float32", "attention": attention}
    loaded = fetch_suite(demo_runs(data_files), model_args)
    lm = get_model("focusft").create_from_arg_obj(model_args, {"batch_size": batch_size, "device": "cpu"})
    evaluate_suite(
        loaded,
        lm,
        label=label,
        output_dir=output_dir,
        meta={"suite": "demo", "checkpoint_dir": str(checkpoint), "attention": attention},
    )
    return output_dir / "report.json"


def _length_file(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LENGTH=FILE, got {text!r}")
    return label, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=_length_file, action="append", required=True, help="LENGTH=FILE, repeatable")
    parser.add_argument("--label", required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--attention", nargs="+", choices=MASK_MODES, default=["causal"], help="inference masks")
    args = parser.parse_args(argv)
    for attention in args.attention:
        report = evaluate(
            args.checkpoint, dict(args.data), args.label, args.output_dir / attention, args.batch_size, attention
        )
        print(f"Wrote {report}")


if __name__ == "__main__":
    main()
