"""Data for FocuSFT: chat/tool conversations with per-token context flags, packing, synthetic long-context data.

The synthetic generator lives in :mod:`focusft.data.synthetic` (also a command line tool).
"""

from focusft.data.chat import ChatDataset, DataStats, chat_dataset, synthetic_dataset
from focusft.data.collate import collate_focus_batch
from focusft.data.sampler import LengthGroupedSampler

__all__ = [
    "ChatDataset",
    "DataStats",
    "LengthGroupedSampler",
    "chat_dataset",
    "collate_focus_batch",
    "synthetic_dataset",
]
