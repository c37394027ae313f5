"""Data for FocuSFT: samples with per-token context flags, collated into the batch contract."""

from focusft.data.collate import collate_focus_batch

__all__ = ["collate_focus_batch"]
