"""The tiny end-to-end demo: a retrieval task, SFT vs FocuSFT trained, evaluated and plotted (``python -m focusft.demo``)."""
