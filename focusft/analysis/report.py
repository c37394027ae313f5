"""``report.json`` and ``report.md`` of one attention analysis, with the paper's figures as reference rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focusft.analysis.metrics import AttentionMetrics
from focusft.analysis.sample import AttentionSample
from focusft.analysis.segments import SEGMENT_NAMES

# Paper Sections 2.2 and 4.4 (Qwen2.5-7B, a 4096-token agentic sample, Appendix C); None: not reported.
# FocuSFT's sink mass is the per-layer figure of Section 4.4 ("0.06%, a 529x reduction").
PAPER_REFERENCE: tuple[dict[str, Any], ...] = (
    {"label": "paper: SFT", "sink": 0.301, "prompt": 0.070, "tool": 0.065, "response": None, "engagement": 0.135},
    {"label": "paper: FocuSFT", "sink": 0.0006, "prompt": 0.270, "tool": 0.143, "response": None, "engagement": 0.414},
)


@dataclass(frozen=True)
class CheckpointResult:
    """One model's metrics and how they were obtained."""

    label: str
    path: str
    mask: str
    metrics: AttentionMetrics

    def summary(self) -> dict[str, Any]:
        metrics = self.metrics
        per_layer = metrics.budget_per_layer()
        return {
            "label": self.label,
            "path": self.path,
            "mask": self.mask,
            "num_layers": metrics.num_layers,
            "heatmap_layer": metrics.heatmap_layer,
            "sink_mass": metrics.sink_mass,
            "context_engagement": metrics.context_engagement,
            "budget": metrics.budget(),
            "sink_mass_per_layer": metrics.sink_mass_per_layer(),
            "budget_per_layer": {name: per_layer[:, i].tolist() for i, name in enumerate(SEGMENT_NAMES)},
            "positional_profile": metrics.positional_profile().tolist(),
        }


def report_data(sample: AttentionSample, results: list[CheckpointResult], run: dict[str, Any]) -> dict[str, Any]:
    return {
        "sample": {
            "description": sample.description,
            "tokens": sample.seq_len,
            "response_tokens": int(sample.response.sum()),
            "segment_tokens": sample.segment_counts(),
            "turn_starts": sample.turn_starts,
        },
        "run": run,
        "checkpoints": [result.summary() for result in results],
        "paper_reference": list(PAPER_REFERENCE),
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def markdown(data: dict[str, Any], plots: list[str]) -> str:
    sample, run = data["sample"], data["run"]
    segments = ", ".join(f"{name} {count}" for name, count in sample["segment_tokens"].items())
    lines = [
        "# Attention dilution",
        "",
        f"Sample: {sample['description']}: {sample['tokens']} tokens, {sample['response_tokens']} response "
        f"(trained) tokens; tokens per segment: {segments}.",
        f"Run: device {run['device']}, dtype {run['dtype']}.",
        "",
        "Shares of the attention paid by response tokens, averaged over heads, response tokens and layers. "
        "Sink: key positions [0:5]; context engagement: prompt (system/user) + tool outputs. "
        "Paper rows: Qwen2.5-7B on a 4096-token agentic sample (paper Sections 2.2, 4.4, Appendix C); "
        "their sink figure for FocuSFT is the per-layer value of Section 4.4.",
        "",
        "| model | mask | sink [0:5] | prompt | tool | response | context engagement |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["checkpoints"]:
        b = row["budget"]
        lines.append(
            f"| {row['label']} | {row['mask']} | {_pct(b['sink'])} | {_pct(b['prompt'])} | {_pct(b['tool'])} "
            f"| {_pct(b['response'])} | {_pct(row['context_engagement'])} |"
        )
    for ref in data["paper_reference"]:
        lines.append(
            f"| {ref['label']} | – | {_pct(ref['sink'])} | {_pct(ref['prompt'])} | {_pct(ref['tool'])} "
            f"| {_pct(ref['response'])} | {_pct(ref['engagement'])} |"
        )
    labels = [row["label"] for row in data["checkpoints"]]
    lines += ["", "Sink mass per layer:", "", "| layer | " + " | ".join(labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for layer in range(max(row["num_layers"] for row in data["checkpoints"])):
        cells = [
            _pct(row["sink_mass_per_layer"][layer]) if layer < row["num_layers"] else "–" for row in data["checkpoints"]
        ]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Plots: " + ", ".join(f"[{name}]({name})" for name in plots), ""]
    return "\n".join(lines)


def write_report(
    out_dir: Path, sample: AttentionSample, results: list[CheckpointResult], run: dict[str, Any], plots: list[str]
) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; returns the JSON data."""
    data = report_data(sample, results, run)
    (out_dir / "report.json").write_text(json.dumps(data, indent=1))
    (out_dir / "report.md").write_text(markdown(data, plots))
    return data
