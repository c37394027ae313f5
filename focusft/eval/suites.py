"""The two task suites as lists of lm-eval runs: the paper's long-context benchmarks, and the offline one.

A *run* is one ``simple_evaluate`` call: tasks that share one set of task
metadata. BABILong reads its context length from the metadata (one length per
run), so each length is its own run; RULER builds all its lengths in one run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focusft.eval.errors import EvalError
from focusft.eval.offline import OFFLINE_LENGTHS, OFFLINE_TASKS, offline_task_name

TASKS_DIR = Path(__file__).parent / "tasks"

PAPER_BABILONG_TASKS = tuple(f"babilong_qa{i}" for i in range(1, 6))
PAPER_BABILONG_LENGTHS = ("4k", "8k", "16k", "32k")
PAPER_RULER_TASKS = ("niah_multivalue", "ruler_cwe", "ruler_vt")
PAPER_RULER_LENGTHS = (4096, 8192, 16384)
PAPER_LONGBENCH_TASKS = ("longbench_hotpotqa", "longbench_multifieldqa_en", "longbench_narrativeqa", "longbench_qasper")
PAPER_GPQA_TASKS = ("gpqa_diamond_zeroshot",)

# Paper tasks whose data is generated here (RULER's), not downloaded; every other paper task needs the Hub.
PAPER_GENERATED_TASKS = ("ruler_cwe", "ruler_vt")

# What each paper task fetches at load time, for the message when it cannot.
PAPER_DATA_SOURCES: dict[str, str] = {
    **dict.fromkeys(PAPER_BABILONG_TASKS, "dataset RMT-team/babilong-1k-samples from the HF hub"),
    "niah_multivalue": "dataset baber/paul_graham_essays from the HF hub (and NLTK's punkt data)",
    "ruler_cwe": "no data (it is generated), but the 'wonderwords' package",
    "ruler_vt": "no data (it is generated)",
    **dict.fromkeys(PAPER_LONGBENCH_TASKS, "dataset Xnhyacinth/LongBench from the HF hub"),
    "gpqa_diamond_zeroshot": "gated dataset Idavidrein/gpqa from the HF hub (accept its terms, then set HF_TOKEN)",
}


@dataclass(frozen=True)
class EvalRun:
    """One lm-eval call.

    Attributes:
        name: identifies the run in file names and messages.
        tasks: lm-eval task or group names.
        metadata: task metadata for this run (merged over the model args, as lm-eval does).
        builtin: whether the tasks are lm-eval's own (else only the bundled YAMLs are indexed, which is faster).
    """

    name: str
    tasks: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    builtin: bool = True

    @property
    def lengths(self) -> list[str]:
        """The context lengths this run evaluates (``max_seq_lengths``: "4k", or tokens as 4096 -> "4k")."""
        value = self.metadata.get("max_seq_lengths")
        values = [] if value is None else value if isinstance(value, list) else [value]
        return [f"{v // 1024}k" if isinstance(v, int) and v % 1024 == 0 else str(v) for v in values]


def paper_suite(tokenizer_dir: str, only: set[str] | None = None) -> list[EvalRun]:
    """BABILong qa1-5 at 4K-32K, RULER at 4K-16K, four LongBench QA tasks, GPQA diamond zero-shot.

    ``tokenizer_dir`` lets RULER size its generated data with the evaluated model's
    tokenizer; ``only`` keeps just those task names (and drops runs left empty).
    """
    runs = [
        EvalRun(f"babilong_{length}", PAPER_BABILONG_TASKS, {"max_seq_lengths": length})
        for length in PAPER_BABILONG_LENGTHS
    ]
    runs.append(
        EvalRun("ruler", PAPER_RULER_TASKS, {"max_seq_lengths": list(PAPER_RULER_LENGTHS), "tokenizer": tokenizer_dir})
    )
    runs.append(EvalRun("longbench", PAPER_LONGBENCH_TASKS))
    runs.append(EvalRun("gpqa", PAPER_GPQA_TASKS))
    return _select(runs, only)


def offline_suite(
    lengths: list[str] | None = None, only: set[str] | None = None, num_samples: int | None = None
) -> list[EvalRun]:
    """The bundled synthetic tasks, one run per length (default: all of ``OFFLINE_LENGTHS``).

    ``only`` holds full task names or synthetic task names (``qa1``, ``tool``);
    ``num_samples`` overrides how many samples each task generates.
    """
    chosen = list(OFFLINE_LENGTHS) if lengths is None else lengths
    unknown = [length for length in chosen if length not in OFFLINE_LENGTHS]
    if unknown:
        raise EvalError(f"Unknown offline length(s) {unknown}; expected some of {list(OFFLINE_LENGTHS)}.")
    metadata = {} if num_samples is None else {"num_samples": num_samples}
    runs = [
        EvalRun(
            f"offline_{length}",
            tuple(offline_task_name(task, length) for task in OFFLINE_TASKS),
            dict(metadata),
            builtin=False,
        )
        for length in chosen
    ]
    if only:
        # "qa1" stands for qa1 at every chosen length.
        only = {offline_task_name(t, length) for t in only & set(OFFLINE_TASKS) for length in chosen} | (
            only - set(OFFLINE_TASKS)
        )
    return _select(runs, only)


def _select(runs: list[EvalRun], only: set[str] | None) -> list[EvalRun]:
    if not only:
        return runs
    known = {task for run in runs for task in run.tasks}
    unknown = sorted(only - known)
    if unknown:
        raise EvalError(f"Task(s) {unknown} are not in this suite; it has {sorted(known)}.")
    kept = [EvalRun(run.name, tuple(t for t in run.tasks if t in only), run.metadata, run.builtin) for run in runs]
    return [run for run in kept if run.tasks]
