"""Result tables: lm-eval results -> one score per (task, length) -> markdown + JSON, and side-by-side comparisons.

A report is the JSON file a suite run writes (``report.json``); a raw lm-eval
results file (``results_*.json`` from ``--output_path``) is read the same way.
Tables show one section per task: a row per checkpoint, a Δ row per checkpoint
after the first (against the first), and optionally the paper's rows; columns are
context lengths. Values are percentages.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from focusft.eval.errors import EvalError
from focusft.eval.reference import PAPER_REFERENCE

# The metric a table shows for each task family (lm-eval also reports others).
PRIMARY_METRICS = {"babilong_": "acc", "longbench_": "qa_f1_score", "gpqa_": "acc", "focusft_": "exact_match"}
RULER_TASKS = ("niah_", "ruler_")
# Averages over tasks, as the paper reports them: name -> task-name pattern.
AVERAGES = {
    "babilong_avg": re.compile(r"babilong_qa[1-5]$"),
    "ruler_avg": re.compile(r"(niah_multivalue|ruler_cwe|ruler_vt)$"),
    "focusft_avg": re.compile(r"focusft_(qa[1-5]|tool)$"),
}
_OFFLINE_NAME = re.compile(r"(focusft_[a-z0-9]+)_(\d+k?)$")
LENGTH_ORDER = ("", "512", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k")


@dataclass(frozen=True)
class Score:
    """One number of a table: ``value`` in [0, 1] (stderr when lm-eval computed one)."""

    task: str
    length: str
    metric: str
    value: float
    stderr: float | None = None


@dataclass
class Report:
    """Scores of one checkpoint, with what produced them."""

    label: str
    scores: list[Score]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "meta": self.meta, "scores": [asdict(s) for s in self.scores]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        return cls(label=data["label"], meta=data.get("meta", {}), scores=[Score(**s) for s in data["scores"]])


def _length_label(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def scores_from_results(results: dict[str, Any]) -> list[Score]:
    """Scores of lm-eval's ``results`` (``simple_evaluate``'s return value or its saved JSON).

    The length of a task comes from its name (offline suite), its metric names
    (RULER) or the ``max_seq_lengths`` string of its metadata (BABILong); other
    tasks have none. Groups are skipped: averages are recomputed by
    :func:`with_averages` so that every table averages the same way.
    """
    groups = set(results.get("groups", {})) | set(results.get("group_subtasks", {}))
    configs = results.get("configs", {})
    scores = []
    for task, metrics in results["results"].items():
        if task in groups:
            continue
        if task.startswith(RULER_TASKS):
            # RULER reports one metric per length ("4096,none"); -1 means no sample of that length.
            for key, value in metrics.items():
                name, _, _ = key.partition(",")
                number = _number(value)
                if name.isdigit() and number is not None and number >= 0:
                    scores.append(Score(task, _length_label(int(name)), "string_match", number))
            continue
        metric = next((m for prefix, m in PRIMARY_METRICS.items() if task.startswith(prefix)), None)
        offline = _OFFLINE_NAME.match(task)
        declared = configs.get(task, {}).get("metadata", {}).get("max_seq_lengths")
        name, task_length = (
            (offline.group(1), offline.group(2)) if offline else (task, declared if isinstance(declared, str) else "")
        )
        for key, value in metrics.items():
            metric_name, _, _ = key.partition(",")
            number = _number(value)
            if number is None or metric_name.endswith("_stderr") or metric_name in ("sample_len", "sample_count"):
                continue
            if metric is not None and metric_name != metric:
                continue
            stderr = _number(metrics.get(key.replace(metric_name, f"{metric_name}_stderr", 1)))
            scores.append(Score(name, task_length, metric_name, number, stderr))
    return scores


def with_averages(scores: Iterable[Score]) -> list[Score]:
    """``scores`` plus the paper's averages (BABILong qa1-5, RULER) and the offline suite's, per length.

    An average is only formed when every task it covers has a score at that length.
    """
    scores = list(scores)
    out = list(scores)
    for name, pattern in AVERAGES.items():
        members = [s for s in scores if pattern.match(s.task)]
        tasks = {s.task for s in members}
        for length in sorted({s.length for s in members}, key=_length_key):
            at_length = {s.task: s for s in members if s.length == length}
            if len(tasks) > 1 and set(at_length) == tasks:
                values = [s.value for s in at_length.values()]
                out.append(Score(name, length, members[0].metric, sum(values) / len(values)))
    return out


def _length_key(length: str) -> tuple[int, str]:
    return (LENGTH_ORDER.index(length), "") if length in LENGTH_ORDER else (len(LENGTH_ORDER), length)


def load_report(path: str | Path, label: str | None = None) -> Report:
    """A ``report.json``, a run directory holding one, or a raw lm-eval results JSON."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise FileNotFoundError(f"No report at {p} (expected a report.json, its directory, or lm-eval results JSON).")
    data = json.loads(p.read_text())
    if "scores" in data:
        report = Report.from_json(data)
    elif "results" in data:
        report = Report(label=p.parent.name, scores=with_averages(scores_from_results(data)), meta={"source": str(p)})
    else:
        raise EvalError(f"{p} is neither a focusft report nor lm-eval results (no 'scores' or 'results').")
    if label:
        report.label = label
    return report


def _cell(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def _delta(value: float | None, base: float | None) -> str:
    return "–" if value is None or base is None else f"{value - base:+.1f}"


def markdown_table(reports: Sequence[Report], reference: bool = False) -> str:
    """One section per task: checkpoints as rows (then Δ rows, then paper rows), lengths as columns."""
    index = [{(s.task, s.length): s for s in r.scores} for r in reports]
    tasks = sorted({s.task for r in reports for s in r.scores}, key=lambda t: (t.split("_")[0], t))
    lines: list[str] = []
    for task in tasks:
        lengths = sorted({s.length for r in reports for s in r.scores if s.task == task}, key=_length_key)
        metric = next(s.metric for r in reports for s in r.scores if s.task == task)
        header = [length or "score" for length in lengths]
        lines += [f"### {task} ({metric}, %)", "", "| model | " + " | ".join(header) + " |"]
        lines.append("|---|" + "---:|" * len(lengths))
        values = [[_pct(idx.get((task, length))) for length in lengths] for idx in index]
        for report, row in zip(reports, values):
            lines.append(f"| {report.label} | " + " | ".join(_cell(v) for v in row) + " |")
        for report, row in list(zip(reports, values))[1:]:
            cells = [_delta(v, b) for v, b in zip(row, values[0])]
            lines.append(f"| Δ {report.label} − {reports[0].label} | " + " | ".join(cells) + " |")
        if reference:
            methods = list(dict.fromkeys(m for length in lengths for m in PAPER_REFERENCE.get((task, length), {})))
            for method in methods:
                cells = [_cell(PAPER_REFERENCE.get((task, length), {}).get(method)) for length in lengths]
                lines.append(f"| paper: {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pct(score: Score | None) -> float | None:
    return None if score is None else 100.0 * score.value


def write_report(report: Report, output_dir: str | Path, reference: bool = False) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report.to_json(), indent=2))
    md_path = out / "report.md"
    md_path.write_text(f"# {report.label}\n\n" + markdown_table([report], reference=reference))
    return json_path, md_path
