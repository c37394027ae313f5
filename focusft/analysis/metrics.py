"""Dilution metrics from attention probabilities: sink mass, budget by segment, positional profile, heatmap.

Everything is derived from one quantity per layer, the attention each key position
receives from the response queries (trained tokens), averaged over heads and over those
queries. Summed over a segment's positions it is that segment's share of the budget (the
shares sum to 1 because every query's probabilities do); over positions [0:5] it is the
sink mass (paper Section 2.2 and Appendix C). Nothing of size ``s x s`` is kept except the
one heatmap layer, pooled to at most ``heatmap_size`` bins per axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from focusft.analysis.segments import SEGMENT_NAMES, Segment

HEATMAP_SIZE = 512


def _bins(length: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin of each of ``length`` positions when pooled into ``min(length, size)`` equal bins, and bin sizes."""
    num_bins = min(length, size)
    index = torch.arange(length, device=device) * num_bins // length
    return index, torch.bincount(index, minlength=num_bins)


@dataclass(frozen=True)
class AttentionMetrics:
    """What one model attends to on one sample under one mask.

    Attributes:
        received: ``[layers, s]`` attention each key position receives, averaged over heads
            and response queries.
        segments: ``[s]`` :class:`Segment` of each token.
        heatmap: ``[bins_q, bins_k]`` attention of all queries in ``heatmap_layer``, averaged over
            heads and pooled into bins of about ``bin_size`` positions; None if not asked for.
        heatmap_layer: the layer of ``heatmap``, or None.
        bin_size: positions per heatmap bin (1: not pooled).
    """

    received: torch.Tensor
    segments: torch.Tensor
    heatmap: torch.Tensor | None
    heatmap_layer: int | None
    bin_size: float

    @property
    def num_layers(self) -> int:
        return self.received.shape[0]

    def budget_per_layer(self) -> torch.Tensor:
        """``[layers, segments]`` share of the response queries' attention on each :class:`Segment`."""
        shares = torch.zeros(self.num_layers, len(Segment), dtype=self.received.dtype)
        return shares.index_add_(1, self.segments.to(shares.device), self.received)

    def sink_mass_per_layer(self) -> list[float]:
        return self.budget_per_layer()[:, Segment.SINK].tolist()

    def budget(self) -> dict[str, float]:
        """Shares averaged over layers, by segment name (sink, prompt, tool, response); they sum to 1."""
        return dict(zip(SEGMENT_NAMES, self.budget_per_layer().mean(dim=0).tolist()))

    @property
    def sink_mass(self) -> float:
        return self.budget()["sink"]

    @property
    def context_engagement(self) -> float:
        """Share of attention on the prompt (system/user) and tool outputs, averaged over layers."""
        budget = self.budget()
        return budget["prompt"] + budget["tool"]

    def positional_profile(self) -> torch.Tensor:
        """``[s]`` attention received per key position, averaged over layers."""
        return self.received.mean(dim=0)


class MetricsAccumulator:
    """Collects :class:`AttentionMetrics` from probability chunks as the layers run."""

    def __init__(
        self,
        num_layers: int,
        response: torch.Tensor,
        segments: torch.Tensor,
        heatmap_layer: int | None,
        heatmap_size: int = HEATMAP_SIZE,
    ) -> None:
        if heatmap_layer is not None and not 0 <= heatmap_layer < num_layers:
            raise ValueError(f"heatmap layer {heatmap_layer} is not a layer of this {num_layers}-layer model.")
        self.response = response
        self.num_response = int(response.sum())
        if self.num_response == 0:
            raise ValueError("The sample has no response (trained) tokens to measure attention from.")
        seq_len = response.shape[0]
        device = response.device
        self.segments = segments
        self.heatmap_layer = heatmap_layer
        self.received = torch.zeros(num_layers, seq_len, dtype=torch.float64, device=device)
        self.bin_index, self.bin_counts = _bins(seq_len, heatmap_size, device)
        num_bins = len(self.bin_counts) if heatmap_layer is not None else 0
        self.heatmap_sum = torch.zeros(num_bins, num_bins, dtype=torch.float64, device=device)
        self.bin_size = seq_len / len(self.bin_counts)

    def add(self, layer: int, rows: torch.Tensor, probs: torch.Tensor) -> None:
        """Probabilities ``[heads, c, s]`` of queries ``rows`` in ``layer``."""
        mean = probs.mean(dim=0)
        self.received[layer] += mean[self.response[rows]].sum(dim=0).double()
        if layer == self.heatmap_layer:
            pooled = torch.zeros(len(rows), len(self.bin_counts), dtype=torch.float64, device=mean.device)
            pooled.index_add_(1, self.bin_index, mean.double())
            self.heatmap_sum.index_add_(0, self.bin_index[rows], pooled)

    def result(self) -> AttentionMetrics:
        counts = self.bin_counts.double()
        heatmap = self.heatmap_sum / counts[:, None] / counts[None, :] if self.heatmap_layer is not None else None
        return AttentionMetrics(
            received=(self.received / self.num_response).cpu(),
            segments=self.segments.cpu(),
            heatmap=heatmap.float().cpu() if heatmap is not None else None,
            heatmap_layer=self.heatmap_layer,
            bin_size=self.bin_size,
        )
