"""Data for FocuSFT: chat/tool conversations with per-token context flags, packing, synthetic long-context data."""

from focusft.data.chat import ChatDataset, DataStats, chat_dataset, synthetic_dataset
from focusft.data.collate import collate_focus_batch
from focusft.data.sampler import LengthGroupedSampler
from focusft.data.synthetic import SYNTHETIC_TASKS, generate_samples, write_jsonl

__all__ = [
    "SYNTHETIC_TASKS",
    "ChatDataset",
    "DataStats",
    "LengthGroupedSampler",
    "chat_dataset",
    "collate_focus_batch",
    "generate_samples",
    "synthetic_dataset",
    "write_jsonl",
]
