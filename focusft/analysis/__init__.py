"""Attention-dilution diagnostics (paper Sections 2.2, 4.4, Appendix C): sink mass, budget, profile, heatmaps.

``focusft-attention`` (:mod:`focusft.analysis.cli`) reports them for checkpoints on one sample;
:mod:`focusft.analysis.probe` logs them during training.
"""

from focusft.analysis.measure import decoder_forward, measure_attention
from focusft.analysis.metrics import AttentionMetrics
from focusft.analysis.sample import AttentionSample
from focusft.analysis.segments import Segment

__all__ = ["AttentionMetrics", "AttentionSample", "Segment", "decoder_forward", "measure_attention"]
