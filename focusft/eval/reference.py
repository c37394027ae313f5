"""The paper's published numbers (docs/DESIGN.md section 7, paper Tables 3, 6, 7, 8), in percent.

Keyed like :class:`focusft.eval.report.Score` rows: ``(task, length)`` -> {method: value}.
The paper's GPQA result comes from agentic multi-turn rollouts, not lm-eval's
zero-shot multiple choice, so it has no reference row here.
"""

from __future__ import annotations

SFT, BIDIR, BILEVEL, FOCUSFT, ADAPT = "SFT", "SFT+Bidir", "Causal Bilevel", "FocuSFT", "FocuSFT+Inf.Adapt"


def _by_length(lengths: tuple[str, ...], rows: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    return {length: {method: values[i] for method, values in rows.items()} for i, length in enumerate(lengths)}


_BABILONG_AVG = _by_length(
    ("4k", "8k", "16k", "32k"),
    {
        SFT: (70.2, 62.6, 47.4, 33.2),
        BIDIR: (65.4, 57.6, 46.0, 33.0),
        BILEVEL: (82.4, 72.6, 56.6, 39.0),
        FOCUSFT: (84.4, 72.8, 57.6, 42.8),
        ADAPT: (83.4, 71.6, 53.4, 41.6),
    },
)
_BABILONG_TASKS = {  # Table 6: SFT and FocuSFT at 4K and 16K
    "babilong_qa1": {"4k": (78.0, 84.0), "16k": (57.0, 52.0)},
    "babilong_qa2": {"4k": (51.0, 77.0), "16k": (19.0, 31.0)},
    "babilong_qa3": {"4k": (53.0, 84.0), "16k": (37.0, 67.0)},
    "babilong_qa4": {"4k": (82.0, 89.0), "16k": (63.0, 69.0)},
    "babilong_qa5": {"4k": (87.0, 88.0), "16k": (61.0, 69.0)},
}
_RULER_CWE = _by_length(("4k", "8k", "16k"), {SFT: (97.5, 85.4, 72.9), FOCUSFT: (97.8, 88.8, 81.1)})
_RULER_AVG = _by_length(
    ("4k", "8k", "16k"),
    {SFT: (98.3, 92.5, 87.3), BIDIR: (98.5, 92.1, 84.9), BILEVEL: (97.9, 91.9, 90.3), FOCUSFT: (98.9, 93.9, 90.4)},
)
_LONGBENCH_F1 = {
    "longbench_hotpotqa": (10.7, 11.6),
    "longbench_multifieldqa_en": (28.6, 33.8),
    "longbench_narrativeqa": (8.7, 11.3),
    "longbench_qasper": (12.2, 12.8),
}

PAPER_REFERENCE: dict[tuple[str, str], dict[str, float]] = {
    **{("babilong_avg", length): row for length, row in _BABILONG_AVG.items()},
    **{
        (task, length): {SFT: sft, FOCUSFT: focus}
        for task, by_length in _BABILONG_TASKS.items()
        for length, (sft, focus) in by_length.items()
    },
    **{("ruler_cwe", length): row for length, row in _RULER_CWE.items()},
    **{("ruler_avg", length): row for length, row in _RULER_AVG.items()},
    **{(task, ""): {SFT: sft, FOCUSFT: focus} for task, (sft, focus) in _LONGBENCH_F1.items()},
}
