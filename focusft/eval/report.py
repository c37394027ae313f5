"""Result tables: lm-eval results -> one score per (task, length) -> markdown + JSON, and side-by-side comparisons.

A report is the JSON file a suite run writes (``report.json``); a raw lm-eval
results file (``results_*.json`` from ``--output_path``) is read the same way.
Tables show one section per task: a row per checkpoint, a Δ row per checkpoint
after the first (against the first), and optionally the paper's rows; columns are
context lengths. A cell is ``value ± standard error (n=samples)`` in percent.
Standard errors are lm-eval's; an average over tasks gets ``sqrt(Σ se²) / k`` and a
Δ row ``sqrt(se_A² + se_B²)``, which treats the two runs as independent (when both
scored the same samples this overstates the error, so it is the cautious figure).
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
_LENGTH = re.compile(r"(\d+)([kK]?)$")  # a length column: tokens, "512", or thousands of 1024, "4k"


@dataclass(frozen=True)
class Score:
    """One number of a table: ``value`` in [0, 1], its standard error and sample count when known."""

    task: str
    length: str
    metric: str
    value: float
    stderr: float | None = None
    n: int | None = None


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
    counts = results.get("n-samples", {})
    scores = []
    for task, metrics in results["results"].items():
        if task in groups:
            continue
        count = counts.get(task, {})
        if task.startswith(RULER_TASKS):
            # RULER reports one metric per length ("4096,none"); -1 means no sample of that length.
            # It generates the same number of samples per length, so without --limit each length has
            # original / lengths of them; with --limit which lengths were cut is not recorded.
            lengths = [key for key in metrics if key.partition(",")[0].isdigit()]
            n = count.get("original") // len(lengths) if lengths and _whole_run(count) else None
            for key, value in metrics.items():
                name, _, _ = key.partition(",")
                number = _number(value)
                if name.isdigit() and number is not None and number >= 0:
                    stderr = _number(metrics.get(key.replace(name, f"{name}_stderr", 1)))
                    scores.append(Score(task, _length_label(int(name)), "string_match", number, stderr, n))
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
            n = count.get("effective", metrics.get("sample_len"))
            scores.append(Score(name, task_length, metric_name, number, stderr, n if isinstance(n, int) else None))
    return scores


def _whole_run(count: dict[str, Any]) -> bool:
    return isinstance(count.get("original"), int) and count.get("original") == count.get("effective")


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
                parts = list(at_length.values())
                k = len(parts)
                stderr = None
                if all(p.stderr is not None for p in parts):
                    stderr = math.sqrt(sum(p.stderr**2 for p in parts)) / k
                n = sum(p.n for p in parts) if all(p.n is not None for p in parts) else None
                out.append(Score(name, length, members[0].metric, sum(p.value for p in parts) / k, stderr, n))
    return out


def _length_key(length: str) -> tuple[int, int, str]:
    """Columns in token order (256 < 512 < 1k = 1024 < 4k): no length first, names that are no length last."""
    match = _LENGTH.match(length)
    if match is None:
        return (2 if length else 0, 0, length)
    return (1, int(match[1]) * (1024 if match[2] else 1), length)


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


def _score_cell(score: Score | None) -> str:
    """``value ± stderr (n=N)`` in percent; parts that are unknown are left out."""
    if score is None or math.isnan(score.value):
        return "–"
    text = f"{100 * score.value:.1f}"
    if score.stderr is not None:
        text += f" ± {100 * score.stderr:.1f}"
    return text + (f" (n={score.n})" if score.n is not None else "")


def _delta_cell(score: Score | None, base: Score | None) -> str:
    """``B − A ± sqrt(se_A² + se_B²)`` in percent (no ± when either standard error is unknown)."""
    if score is None or base is None:
        return "–"
    text = f"{100 * (score.value - base.value):+.1f}"
    if score.stderr is not None and base.stderr is not None:
        text += f" ± {100 * math.hypot(score.stderr, base.stderr):.1f}"
    return text


NO_REFERENCE_NOTE = (
    "No published paper numbers for these tasks (the paper reports BABILong, RULER and LongBench; "
    "see focusft/eval/reference.py), so --reference adds no rows."
)


def markdown_table(reports: Sequence[Report], reference: bool = False) -> str:
    """One section per task: checkpoints as rows (then Δ rows, then paper rows), lengths as columns."""
    index = [{(s.task, s.length): s for s in r.scores} for r in reports]
    tasks = sorted({s.task for r in reports for s in r.scores}, key=lambda t: (t.split("_")[0], t))
    lines: list[str] = []
    paper_rows = 0
    for task in tasks:
        lengths = sorted({s.length for r in reports for s in r.scores if s.task == task}, key=_length_key)
        metric = next(s.metric for r in reports for s in r.scores if s.task == task)
        header = [length or "score" for length in lengths]
        lines += [f"### {task} ({metric}, %)", "", "| model | " + " | ".join(header) + " |"]
        lines.append("|---|" + "---:|" * len(lengths))
        rows = [[idx.get((task, length)) for length in lengths] for idx in index]
        for report, row in zip(reports, rows):
            lines.append(f"| {report.label} | " + " | ".join(_score_cell(s) for s in row) + " |")
        for report, row in list(zip(reports, rows))[1:]:
            cells = [_delta_cell(s, b) for s, b in zip(row, rows[0])]
            lines.append(f"| Δ {report.label} − {reports[0].label} | " + " | ".join(cells) + " |")
        if reference:
            methods = list(dict.fromkeys(m for length in lengths for m in PAPER_REFERENCE.get((task, length), {})))
            for method in methods:
                cells = [_cell(PAPER_REFERENCE.get((task, length), {}).get(method)) for length in lengths]
                lines.append(f"| paper: {method} | " + " | ".join(cells) + " |")
                paper_rows += 1
        lines.append("")
    if reference and not paper_rows:
        lines += [NO_REFERENCE_NOTE, ""]
    return "\n".join(lines)


def report_header(report: Report) -> str:
    """What produced the numbers: checkpoint, backend, suite, date, versions and the command line."""
    meta = report.meta
    fields = [
        ("checkpoint", meta.get("checkpoint_dir")),
        ("backend", meta.get("backend")),
        ("suite", meta.get("suite")),
        ("date", meta.get("date")),
        ("lm-eval", meta.get("lm_eval")),
        ("command", f"`{meta['command']}`" if meta.get("command") else None),
    ]
    lines = [f"- {name}: {value}" for name, value in fields if value]
    legend = "Cells: score in % ± standard error (n = samples scored); Δ rows: difference ± sqrt(se_A² + se_B²)."
    return "\n".join([f"# {report.label}", "", *lines, "", legend, "", ""])


def write_report(report: Report, output_dir: str | Path, reference: bool = False) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report.to_json(), indent=2))
    md_path = out / "report.md"
    md_path.write_text(report_header(report) + markdown_table([report], reference=reference))
    return json_path, md_path
