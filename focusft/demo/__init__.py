"""Tiny end-to-end demo: SFT vs FocuSFT on a retrieval task, trained, evaluated, plotted (``focusft-demo``)."""
