"""The paper's result tables and Figure 4, filled from this project's reports, beside the paper's rows.

Inputs per variant (``sft``, ``sft_bidir``, ``causal_bilevel``, ``focusft``): the suite's
:class:`~focusft.eval.report.Report` and the agentic GPQA scores (``focusft-agent-eval``'s
``results.json``). Outputs: markdown for Tables 1-3 and B.1 (paper Table 6), and Figure 4
(BABILong accuracy by context length) as a PNG. A cell that was not measured reads "not run".

With the offline suite (no hub), BABILong's place is taken by the bundled synthetic
bAbI-style tasks ``focusft_qa1..5`` at their own lengths, and every table says so: the
numbers are then this project's stand-in, not comparable to the paper's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focusft.eval.report import Report, Score

VARIANTS: dict[str, str] = {
    "sft": "Standard SFT",
    "sft_bidir": "SFT + Bidir",
    "causal_bilevel": "Causal Bilevel",
    "focusft": "FocuSFT",
}
ABLATION = {"sft": ("×", "×"), "sft_bidir": ("×", "✓"), "causal_bilevel": ("✓", "×"), "focusft": ("✓", "✓")}
NOT_RUN = "not run"

# The paper's numbers (percent), Tables 1, 2, 3 and 6.
PAPER_TABLE1 = {  # RULER: task -> method -> (4K, 8K, 16K)
    "niah_multivalue": {
        "Pretrained": (98.4, 95.1, 94.0),
        "Standard SFT": (97.6, 94.6, 94.6),
        "FocuSFT": (98.9, 95.4, 95.6),
    },
    "ruler_cwe": {"Pretrained": (98.0, 83.2, 66.7), "Standard SFT": (97.5, 85.4, 72.9), "FocuSFT": (97.8, 88.8, 81.1)},
    "ruler_vt": {"Pretrained": (99.6, 96.5, 93.7), "Standard SFT": (100.0, 97.4, 94.6), "FocuSFT": (100.0, 97.5, 94.4)},
}
RULER_LENGTHS = ("4k", "8k", "16k")
LONGBENCH_TASKS = ("longbench_hotpotqa", "longbench_multifieldqa_en", "longbench_narrativeqa", "longbench_qasper")
PAPER_TABLE2 = {  # LongBench F1 (4 tasks, avg), GPQA pass@1, pass@32
    "Standard SFT": (10.7, 28.6, 8.7, 12.2, 15.0, 15.6, 78.8),
    "FocuSFT": (11.6, 33.8, 11.3, 12.8, 17.4, 19.4, 80.8),
}
BABILONG_LENGTHS = ("4k", "8k", "16k", "32k")
PAPER_TABLE3 = {
    "Standard SFT": (70.2, 62.6, 47.4, 33.2),
    "SFT + Bidir": (65.4, 57.6, 46.0, 33.0),
    "Causal Bilevel": (82.4, 72.6, 56.6, 39.0),
    "FocuSFT": (84.4, 72.8, 57.6, 42.8),
}
PAPER_TABLE6 = {  # task -> (type, SFT 4K, FocuSFT 4K, SFT 16K, FocuSFT 16K)
    "qa1": ("Single fact", 78.0, 84.0, 57.0, 52.0),
    "qa2": ("Two facts", 51.0, 77.0, 19.0, 31.0),
    "qa3": ("Temporal", 53.0, 84.0, 37.0, 67.0),
    "qa4": ("Spatial", 82.0, 89.0, 63.0, 69.0),
    "qa5": ("Argument", 87.0, 88.0, 61.0, 69.0),
}


@dataclass(frozen=True)
class Family:
    """Which tasks stand for BABILong: the real one (paper suite) or the offline stand-in."""

    prefix: str  # "babilong_" or "focusft_"
    average: str  # "babilong_avg" or "focusft_avg"
    offline: bool

    def lengths(self, reports: Sequence[Report]) -> list[str]:
        if not self.offline:
            return list(BABILONG_LENGTHS)
        found = {s.length for r in reports for s in r.scores if s.task == self.average}
        return sorted(found, key=_tokens)


def _tokens(length: str) -> int:
    """ "512" -> 512, "16k" -> 16384."""
    return int(length[:-1]) * 1024 if length.endswith("k") else int(length)


def family(reports: Sequence[Report]) -> Family:
    offline = not any(s.task.startswith("babilong_") for r in reports for s in r.scores)
    return Family("focusft_", "focusft_avg", True) if offline else Family("babilong_", "babilong_avg", False)


def _score(report: Report | None, task: str, length: str) -> Score | None:
    if report is None:
        return None
    return next((s for s in report.scores if s.task == task and s.length == length), None)


def _cell(score: Score | None) -> str:
    if score is None:
        return NOT_RUN
    if score.stderr is None:
        return f"{100 * score.value:.1f}"
    return f"{100 * score.value:.1f} ± {100 * score.stderr:.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _paper(values: Sequence[float]) -> list[str]:
    return [f"{v:.1f}" for v in values]


def table1(reports: Mapping[str, Report]) -> str:
    header = ["Method"] + [f"{name} {length.upper()}" for name in ("NIAH-MV", "CWE", "VT") for length in RULER_LENGTHS]
    lines = ["### Table 1: RULER (accuracy %)", "", _row(header), _row(["---"] * len(header))]
    for key, report in reports.items():
        cells = [_cell(_score(report, task, length)) for task in PAPER_TABLE1 for length in RULER_LENGTHS]
        lines.append(_row([f"**{VARIANTS[key]}** (this run)", *cells]))
    for method in ("Pretrained", "Standard SFT", "FocuSFT"):
        lines.append(
            _row([f"{method} (paper)"] + [v for task in PAPER_TABLE1 for v in _paper(PAPER_TABLE1[task][method])])
        )
    return "\n".join(lines)


def table2(reports: Mapping[str, Report], gpqa: Mapping[str, Mapping[str, float]]) -> str:
    header = ["Method", "HotpotQA", "Multifield", "Narrative", "Qasper", "Avg", "GPQA pass@1", "GPQA pass@k"]
    lines = ["### Table 2: LongBench QA (F1 %) and agentic GPQA", "", _row(header), _row(["---"] * len(header))]
    for key, report in reports.items():
        scores = [_score(report, task, "") for task in LONGBENCH_TASKS]
        cells = [_cell(s) for s in scores]
        average = (
            f"{100 * sum(s.value for s in scores) / len(scores):.1f}" if all(s is not None for s in scores) else NOT_RUN
        )
        agent = gpqa.get(key)
        if agent:
            k = max((int(name[5:]) for name in agent if name.startswith("pass@") and name[5:].isdigit()), default=None)
            majority = f"{agent['pass@1 (majority)']:.1f}"
            oracle = f"{agent[f'pass@{k}']:.1f} (k={k})" if k else NOT_RUN
        else:
            majority = oracle = NOT_RUN
        lines.append(_row([f"**{VARIANTS[key]}** (this run)", *cells, average, majority, oracle]))
    for method, values in PAPER_TABLE2.items():
        cells = _paper(values)
        lines.append(_row([f"{method} (paper)", *cells[:6], f"{cells[6]} (k=32)"]))
    return "\n".join(lines)


def table3(reports: Mapping[str, Report]) -> str:
    fam = family(list(reports.values()))
    lengths = fam.lengths(list(reports.values()))
    title = (
        "BABILong average accuracy %"
        if not fam.offline
        else "offline stand-in: synthetic qa1-qa5 + tool average, exact match %"
    )
    header = ["Method", "Bilevel", "Bidir", *[length.upper() for length in lengths]]
    lines = [f"### Table 3: ablation ({title})", "", _row(header), _row(["---"] * len(header))]
    for key, report in reports.items():
        cells = [_cell(_score(report, fam.average, length)) for length in lengths]
        lines.append(_row([f"**{VARIANTS[key]}** (this run)", *ABLATION[key], *cells]))
    paper_header = ["Method (paper, BABILong)", "Bilevel", "Bidir", *[x.upper() for x in BABILONG_LENGTHS]]
    lines += ["", _row(paper_header), _row(["---"] * len(paper_header))]
    for (key, label), values in zip(VARIANTS.items(), PAPER_TABLE3.values()):
        lines.append(_row([label, *ABLATION[key], *_paper(values)]))
    return "\n".join(lines)


def table_b1(reports: Mapping[str, Report]) -> str:
    fam = family(list(reports.values()))
    found = fam.lengths(list(reports.values()))
    lengths = ["4k", "16k"] if not fam.offline else list(dict.fromkeys(found[:1] + found[-1:]))  # shortest, longest
    sft, focus = reports.get("sft"), reports.get("focusft")
    header = ["Task", "Type"]
    for length in lengths:
        header += [f"SFT {length.upper()}", f"FocuSFT {length.upper()}", "Δ"]
    title = "per-task BABILong accuracy %" if not fam.offline else "per-task offline stand-in, exact match %"
    lines = [f"### Table B.1 ({title})", "", _row(header), _row(["---"] * len(header))]
    for task, (kind, *_) in PAPER_TABLE6.items():
        cells = [task.upper(), kind]
        for length in lengths:
            a, b = _score(sft, fam.prefix + task, length), _score(focus, fam.prefix + task, length)
            delta = f"{100 * (b.value - a.value):+.1f}" if a and b else NOT_RUN
            cells += [_cell(a), _cell(b), delta]
        lines.append(_row(cells))
    lines += [
        "",
        "Paper (BABILong, Table 6):",
        "",
        _row(["Task", "SFT 4K", "FocuSFT 4K", "Δ", "SFT 16K", "FocuSFT 16K", "Δ"]),
    ]
    lines.append(_row(["---"] * 7))
    for task, (_, s4, f4, s16, f16) in PAPER_TABLE6.items():
        lines.append(
            _row(
                [
                    task.upper(),
                    f"{s4:.1f}",
                    f"{f4:.1f}",
                    f"{f4 - s4:+.1f}",
                    f"{s16:.1f}",
                    f"{f16:.1f}",
                    f"{f16 - s16:+.1f}",
                ]
            )
        )
    return "\n".join(lines)


def figure4(reports: Mapping[str, Report], path: Path) -> Path:
    """BABILong (or the offline stand-in) average accuracy by context length: this run solid, paper dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fam = family(list(reports.values()))
    colours = dict(zip(VARIANTS, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    fig, axes = plt.subplots(1, 2 if fam.offline else 1, figsize=(11 if fam.offline else 6, 4), squeeze=False)
    ours, paper = axes[0][0], axes[0][-1]
    lengths = fam.lengths(list(reports.values()))
    for key, report in reports.items():
        points = [(i, _score(report, fam.average, length)) for i, length in enumerate(lengths)]
        points = [(i, s) for i, s in points if s is not None]
        if points:
            ours.errorbar(
                [i for i, _ in points],
                [100 * s.value for _, s in points],
                yerr=[100 * (s.stderr or 0.0) for _, s in points],
                marker="o",
                color=colours[key],
                label=f"{VARIANTS[key]} (this run)",
                capsize=3,
            )
    for (key, label), values in zip(VARIANTS.items(), PAPER_TABLE3.values()):
        paper.plot(range(len(BABILONG_LENGTHS)), values, "--", marker="s", color=colours[key], label=f"{label} (paper)")
    ours.set_xticks(range(len(lengths)), [x.upper() for x in lengths])
    paper.set_xticks(range(len(BABILONG_LENGTHS)), [x.upper() for x in BABILONG_LENGTHS])
    for ax in {id(ours): ours, id(paper): paper}.values():
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)  # a 0% or 100% marker stays whole
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    if fam.offline:
        ours.set_title("this run: offline stand-in (synthetic qa1-qa5 + tool)")
        paper.set_title("paper: BABILong (Figure 4)")
    else:
        ours.set_title("BABILong average: this run (solid) vs paper (dashed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def all_tables(reports: Mapping[str, Report], gpqa: Mapping[str, Mapping[str, float]], meta: Mapping[str, Any]) -> str:
    """The whole markdown page: what was run, then Tables 1, 2, 3 and B.1 and the figure."""
    fam = family(list(reports.values()))
    intro = [
        "# The paper's tables, reproduced",
        "",
        f"Suite: {meta.get('suite')}; checkpoints: "
        + ", ".join(f"{VARIANTS[k]} = `{v}`" for k, v in meta.get("checkpoints", {}).items())
        + ".",
        "Cells are `value ± standard error` (percent) from this run; rows marked (paper) are the paper's "
        "published numbers.",
    ]
    if fam.offline:
        intro.append(
            "**Offline suite:** BABILong, RULER and LongBench need the hub; the synthetic qa1-qa5 and tool tasks "
            "stand in for BABILong, so these numbers are not comparable to the paper's."
        )
    return (
        "\n\n".join(
            [
                "\n".join(intro),
                table1(reports),
                table2(reports, gpqa),
                table3(reports),
                table_b1(reports),
                "![Figure 4](figure4.png)",
            ]
        )
        + "\n"
    )
