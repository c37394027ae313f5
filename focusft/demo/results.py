"""The demo's table: accuracy ± stderr per variant and length, attention figures and training speed."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any

_STEP_LINE = re.compile(r"Step (\d+) \| (.*)")
_VALUE = re.compile(r"(\w+):(\S+)")


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The lines of a torchtune ``DiskLogger`` file (``Step N | key:value ...``), in order, with ``step``."""
    rows = []
    for line in path.read_text().splitlines():
        match = _STEP_LINE.match(line.strip())
        if match:
            row = {"step": float(match.group(1))}
            row |= {key: float(value) for key, value in _VALUE.findall(match.group(2))}
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Speed:
    """Training speed of one run, first step (warm-up) left out when there are others."""

    step_seconds: float
    tokens_per_second: float  # all processes together

    @classmethod
    def from_metrics(cls, rows: list[dict[str, float]], processes: int) -> Speed:
        timed = rows[1:] if len(rows) > 1 else rows
        return cls(
            step_seconds=mean(r["step_seconds"] for r in timed),
            tokens_per_second=processes * mean(r["tokens_per_second_per_gpu"] for r in timed),
        )


def inner_loss_drop(rows: list[dict[str, float]]) -> float | None:
    """Mean relative drop of the answer loss over a step's inner loop (None: no inner loop was logged)."""
    steps = [r for r in rows if "inner_loss_before_0" in r]
    if not steps:
        return None
    last = max(int(key.rsplit("_", 1)[1]) for key in steps[0] if key.startswith("inner_loss_after_"))
    return mean(1 - r[f"inner_loss_after_{last}"] / r["inner_loss_before_0"] for r in steps if r["inner_loss_before_0"])


@dataclass(frozen=True)
class Row:
    """One (variant, length) cell group of the table; fractions in [0, 1].

    ``accuracy``/``stderr``/``answered_place`` are answered causally (as the paper evaluates);
    ``bidir_accuracy``/``bidir_stderr`` with the prompt prefilled with the training mask.
    ``speed_reused``: the training stage was reused from an earlier demo run, so its speed was
    measured then, under whatever load the machine had.
    """

    variant: str
    length: int
    accuracy: float
    stderr: float
    answered_place: float
    samples: int
    bidir_accuracy: float
    bidir_stderr: float
    sink_mass: float
    context_engagement: float
    step_seconds: float
    tokens_per_second: float
    speed_reused: bool = False


def eval_scores(eval_dir: Path) -> dict[int, tuple[float, float, float, int]]:
    """Length -> (exact match, stderr, answered a place, samples) from the lm-eval results of one checkpoint."""
    scores = {}
    for path in sorted((eval_dir / "lm_eval").glob("demo_*.json"), key=lambda p: int(p.stem.removeprefix("demo_"))):
        results = json.loads(path.read_text())
        metrics = results["results"]["focusft_demo"]
        length = int(path.stem.removeprefix("demo_"))
        samples = results["n-samples"]["focusft_demo"]["effective"]
        scores[length] = (
            metrics["exact_match,none"],
            metrics["exact_match_stderr,none"],
            metrics["answered_place,none"],
            samples,
        )
    return scores


def attention_means(reports: list[Path]) -> dict[str, dict[str, float]]:
    """Label -> mean sink mass, context engagement and attention budget over the reports (one per row)."""
    sums: dict[str, list[dict[str, float]]] = {}
    for report in reports:
        for checkpoint in json.loads(report.read_text())["checkpoints"]:
            figures = {"sink_mass": checkpoint["sink_mass"], "context_engagement": checkpoint["context_engagement"]}
            figures |= {f"budget_{name}": value for name, value in checkpoint["budget"].items()}
            sums.setdefault(checkpoint["label"], []).append(figures)
    return {label: {key: mean(f[key] for f in rows) for key in rows[0]} for label, rows in sums.items()}


REUSED_MARK = "†"


BASE_TITLE = "Base (not fine-tuned)"


def markdown_table(
    rows: list[Row],
    titles: dict[str, str],
    base: dict[int, dict[str, float]] | None = None,
    inner_drops: dict[str, float | None] | None = None,
) -> str:
    """One line per (variant, length), after the base's attention per length (``base``: length -> figures).

    ``inner_drops``: variant -> its inner loop's mean relative answer-loss drop (None or absent: "–").
    """
    lines = [
        "| variant | length (tokens) | exact match % ± stderr, causal | exact match % ± stderr, bidir prefill "
        "| inner-loop loss reduction % | answered a place % | n | sink mass % | context engagement % "
        "| step time s | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length, figures in sorted((base or {}).items()):
        lines.append(
            f"| {BASE_TITLE} | {length} | – | – | – | – | – | {100 * figures['sink_mass']:.2f} "
            f"| {100 * figures['context_engagement']:.1f} | – | – |"
        )
    for row in rows:
        mark = REUSED_MARK if row.speed_reused else ""
        drop = (inner_drops or {}).get(row.variant)
        lines.append(
            f"| {titles.get(row.variant, row.variant)} | {row.length} "
            f"| {100 * row.accuracy:.1f} ± {100 * row.stderr:.1f} "
            f"| {100 * row.bidir_accuracy:.1f} ± {100 * row.bidir_stderr:.1f} "
            f"| {'–' if drop is None else f'{100 * drop:.1f}'} "
            f"| {100 * row.answered_place:.1f} | {row.samples} | {100 * row.sink_mass:.2f} "
            f"| {100 * row.context_engagement:.1f} | {row.step_seconds:.2f}{mark} | {row.tokens_per_second:.0f}{mark} |"
        )
    if any(row.speed_reused for row in rows):
        lines.append(
            f"\n{REUSED_MARK} training stage reused from an earlier demo run: its speed was measured then, "
            "under that run's load (see the stage times above)."
        )
    return "\n".join(lines) + "\n"


def summary(
    rows: list[Row],
    titles: dict[str, str],
    base: dict[int, dict[str, float]],
    inner_drops: dict[str, float | None],
) -> dict[str, Any]:
    """The figures of ``results.json`` by name: the base's attention, then per variant.

    ``base_sink_mass`` is at the training length (the first eval length); every fraction is in [0, 1].
    """
    training_length = min(base)
    variants: dict[str, Any] = {}
    for row in rows:
        entry = variants.setdefault(
            row.variant,
            {
                "title": titles.get(row.variant, row.variant),
                "inner_loss_reduction": inner_drops.get(row.variant),
                "accuracy": {},
                "sink_mass": {},
                "context_engagement": {},
                "step_seconds": row.step_seconds,
                "tokens_per_second": row.tokens_per_second,
                "speed_reused": row.speed_reused,
            },
        )
        entry["accuracy"][str(row.length)] = {
            "causal": {"exact_match": row.accuracy, "stderr": row.stderr},
            "bidir_context": {"exact_match": row.bidir_accuracy, "stderr": row.bidir_stderr},
        }
        entry["sink_mass"][str(row.length)] = row.sink_mass
        entry["context_engagement"][str(row.length)] = row.context_engagement
    return {
        "base_sink_mass": base[training_length]["sink_mass"],
        "base_context_engagement": base[training_length]["context_engagement"],
        "base": {str(length): figures for length, figures in base.items()},
        "variants": variants,
    }


def write_results(
    out_dir: Path, rows: list[Row], titles: dict[str, str], notes: list[str], figures: dict[str, Any]
) -> tuple[Path, Path]:
    """``results.md`` (notes, then the table) and ``results.json`` (``figures``, notes and rows).

    ``figures`` is :func:`summary`'s: the table's base lines and inner-loop column come from it.
    """
    base = {int(length): values for length, values in figures["base"].items()}
    drops = {name: entry["inner_loss_reduction"] for name, entry in figures["variants"].items()}
    table = markdown_table(rows, titles, base, drops)
    md = out_dir / "results.md"
    md.write_text("# FocuSFT demo\n\n" + "".join(f"{n}\n" for n in notes) + "\n" + table)
    js = out_dir / "results.json"
    js.write_text(json.dumps({**figures, "notes": notes, "rows": [asdict(r) for r in rows]}, indent=1))
    return md, js


def finite_fraction(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= 1.0
