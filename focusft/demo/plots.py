"""The demo's figures (matplotlib PNGs): loss curves, accuracy by length, attention budget.

Curves that coincide stay visible (each variant its own line style and marker, and a small
horizontal offset on the accuracy plot); markers at 100% are not clipped; the budget uses
``focusft-attention``'s segment colours and keeps its legend off the bars.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from focusft.analysis.plots import SEGMENT_COLOURS  # noqa: E402
from focusft.demo.results import Row  # noqa: E402

BUDGET_SEGMENTS = ("sink", "prompt", "tool", "response")
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D")


def loss_curves(path: Path, curves: dict[str, list[dict[str, float]]]) -> Path:
    """Training loss (answer tokens and end of turn) per step of each variant."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (label, rows) in enumerate(curves.items()):
        style = LINE_STYLES[index % len(LINE_STYLES)]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, linewidth=1.2, label=label)
    ax.set(title="training loss (answer tokens)", xlabel="step", ylabel="loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_by_length(path: Path, rows: list[Row], titles: dict[str, str], chance: float) -> Path:
    """Exact match ± 1 stderr per variant over the eval lengths; solid causal, dashed bidir prefill."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    variants = list(dict.fromkeys(r.variant for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, variant in enumerate(variants):
        mine = [r for r in rows if r.variant == variant]
        # Offset each variant a little along the (log) length axis so that equal values stay apart.
        shift = 1 + 0.025 * (index - (len(variants) - 1) / 2)
        for mask, style, accuracy, stderr in (
            ("causal", "-", lambda r: r.accuracy, lambda r: r.stderr),
            ("bidir prefill", "--", lambda r: r.bidir_accuracy, lambda r: r.bidir_stderr),
        ):
            ax.errorbar(
                [r.length * shift for r in mine],
                [100 * accuracy(r) for r in mine],
                yerr=[100 * stderr(r) for r in mine],
                linestyle=style,
                marker=MARKERS[index % len(MARKERS)],
                fillstyle="full" if mask == "causal" else "none",
                color=colours[index % len(colours)],
                capsize=3,
                clip_on=False,
                label=f"{titles.get(variant, variant)}, {mask}",
            )
    ax.axhline(100 * chance, color="grey", linestyle=":", label="guessing a place")
    lengths = sorted({r.length for r in rows})
    ax.set(xscale="log", xlabel="conversation length (tiny-model tokens)", ylabel="exact match %", ylim=(0, 104))
    ax.set_xticks(lengths, [str(x) for x in lengths])
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def attention_budget(path: Path, budgets: dict[str, dict[str, float]], length: int) -> Path:
    """Stacked shares of the answer tokens' attention by segment, one bar per checkpoint."""
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(budgets)
    bottom = [0.0] * len(labels)
    for segment in BUDGET_SEGMENTS:
        values = [100 * budgets[label].get(f"budget_{segment}", 0.0) for label in labels]
        ax.bar(labels, values, bottom=bottom, label=segment, color=SEGMENT_COLOURS[segment])
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(ylabel="% of answer tokens' attention", ylim=(0, 100))
    ax.set_title(f"attention budget, {length}-token eval stories (causal)")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
