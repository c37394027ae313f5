"""The demo's figures (matplotlib PNGs): loss curves, accuracy by length, attention budget."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from focusft.demo.results import Row  # noqa: E402

BUDGET_SEGMENTS = ("sink", "prompt", "tool", "response")


def loss_curves(path: Path, curves: dict[str, list[dict[str, float]]]) -> Path:
    """Training loss (answer tokens and end of turn) per step of each variant."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in curves.items():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
    ax.set(title="training loss (answer tokens)", xlabel="step", ylabel="loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_by_length(path: Path, rows: list[Row], titles: dict[str, str], chance: float) -> Path:
    """Exact match with ± 1 stderr bars per variant, over the eval lengths."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r.variant for r in rows):
        mine = [r for r in rows if r.variant == variant]
        ax.errorbar(
            [r.length for r in mine],
            [100 * r.accuracy for r in mine],
            yerr=[100 * r.stderr for r in mine],
            marker="o",
            capsize=4,
            label=titles.get(variant, variant),
        )
    ax.axhline(100 * chance, color="grey", linestyle=":", label="guessing a place")
    lengths = sorted({r.length for r in rows})
    ax.set(xscale="log", xlabel="conversation length (tiny-model tokens)", ylabel="exact match %", ylim=(0, 100))
    ax.set_xticks(lengths, [str(x) for x in lengths])
    ax.minorticks_off()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def attention_budget(path: Path, budgets: dict[str, dict[str, float]], length: int) -> Path:
    """Stacked shares of the answer tokens' attention by segment, one bar per variant."""
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = list(budgets)
    bottom = [0.0] * len(labels)
    for segment in BUDGET_SEGMENTS:
        values = [100 * budgets[label].get(f"budget_{segment}", 0.0) for label in labels]
        ax.bar(labels, values, bottom=bottom, label=segment)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(ylabel="% of response tokens' attention", title=f"attention budget, {length}-token eval stories")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
