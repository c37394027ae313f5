"""matplotlib figures of an attention analysis (PNG): sink mass per layer, budget, positional profile, heatmaps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from focusft.analysis.report import PAPER_REFERENCE, CheckpointResult  # noqa: E402
from focusft.analysis.sample import AttentionSample  # noqa: E402
from focusft.analysis.segments import SEGMENT_NAMES  # noqa: E402

SEGMENT_COLOURS = {"sink": "#d62728", "prompt": "#1f77b4", "tool": "#2ca02c", "response": "#9467bd"}
DPI = 120


def _save(fig: plt.Figure, path: Path) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path.name


def plot_sink_mass(results: list[CheckpointResult], path: Path) -> str:
    """Grouped bars: sink mass of each layer, one colour per checkpoint; the paper's SFT level as a line."""
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * results[0].metrics.num_layers * len(results)), 3.5))
    width = 0.8 / len(results)
    for i, result in enumerate(results):
        values = 100 * np.array(result.metrics.sink_mass_per_layer())
        ax.bar(np.arange(len(values)) + (i - (len(results) - 1) / 2) * width, values, width, label=result.label)
    ax.axhline(100 * PAPER_REFERENCE[0]["sink"], color="grey", linestyle="--", linewidth=1, label="paper: SFT (mean)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("sink mass on [0:5] (%)")
    ax.set_title("Attention sink mass per layer (response queries)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_budget(results: list[CheckpointResult], path: Path) -> str:
    """Stacked bars of the budget by segment, the checkpoints' then the paper's (unreported share hatched)."""
    rows = [(r.label, r.metrics.budget()) for r in results] + [(ref["label"], ref) for ref in PAPER_REFERENCE]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    for y, (_, shares) in enumerate(rows):
        left = 0.0
        for name in SEGMENT_NAMES:
            value = shares[name]
            if value is None:
                continue
            ax.barh(y, 100 * value, left=100 * left, color=SEGMENT_COLOURS[name], label=name if y == 0 else None)
            left += value
        if left < 0.999:
            ax.barh(y, 100 * (1 - left), left=100 * left, color="white", edgecolor="grey", hatch="//")
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of response-query attention (%, mean over layers); hatched: not reported")
    ax.set_title("Attention budget by segment")
    ax.legend(ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    return _save(fig, path)


def plot_profile(results: list[CheckpointResult], sample: AttentionSample, path: Path) -> str:
    """Mean attention received per key position (log scale), turn starts as faint lines."""
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for start in sample.turn_starts:
        ax.axvline(start, color="lightgrey", linewidth=0.6)
    for result in results:
        ax.plot(result.metrics.positional_profile().numpy(), linewidth=0.8, label=result.label)
    ax.set_yscale("log")
    ax.set_xlabel("key position (grey lines: turn starts)")
    ax.set_ylabel("mean attention received")
    ax.set_title("Positional profile (response queries, mean over heads and layers)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_heatmaps(results: list[CheckpointResult], sample: AttentionSample, path: Path) -> str:
    """Query x key attention of each checkpoint's heatmap layer (mean over heads), turns marked.

    One log colour scale for all panels, so that equal colours are equal attention across checkpoints.
    """
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5), squeeze=False, layout="constrained")
    heats = [result.metrics.heatmap.numpy() for result in results]
    positive = np.concatenate([heat[heat > 0] for heat in heats])
    top = float(positive.max()) if positive.size else 1.0
    floor = max(float(positive.min()), top * 1e-6) if positive.size else 1e-9
    norm = LogNorm(vmin=floor, vmax=top)
    extent = (0, sample.seq_len, sample.seq_len, 0)
    for ax, result, heat in zip(axes[0], results, heats):
        metrics = result.metrics
        image = ax.imshow(np.clip(heat, floor, None), norm=norm, extent=extent, interpolation="nearest")
        for start in sample.turn_starts[1:]:
            ax.axhline(start, color="white", linewidth=0.4, alpha=0.7)
            ax.axvline(start, color="white", linewidth=0.4, alpha=0.7)
        pooled = f", {metrics.bin_size:.1f} positions/pixel" if metrics.bin_size > 1 else ""
        ax.set_title(f"{result.label} ({result.mask}), layer {metrics.heatmap_layer}{pooled}", fontsize=9)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.colorbar(image, ax=list(axes[0]), fraction=0.046, label="attention (shared scale)")
    return _save(fig, path)


def write_plots(out_dir: Path, sample: AttentionSample, results: list[CheckpointResult]) -> list[str]:
    """All four figures into ``out_dir``; returns their file names."""
    return [
        plot_sink_mass(results, out_dir / "sink_mass_per_layer.png"),
        plot_budget(results, out_dir / "attention_budget.png"),
        plot_profile(results, sample, out_dir / "positional_profile.png"),
        plot_heatmaps(results, sample, out_dir / "attention_heatmap.png"),
    ]
