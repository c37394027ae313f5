"""Checks a suite runs before it builds any task: is the Hub reachable, can RULER size its data.

Both would otherwise fail slowly: without network every hub dataset retries for
tens of seconds per task and length, and lm-eval's RULER ``vt``/``cwe`` generators
loop forever (printing a line per try) when even their smallest prompt is longer
than the target length under the given tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

HUB_PROBE_TIMEOUT_S = 5.0
VT_ICL_MAX_TOKENS = 500  # lm-eval's vt builds its in-context example with max_seq_length=500
PROBE_DRAWS = 5  # the generators are random: measure the smallest prompt a few times, keep the longest


def hub_unreachable_reason() -> str | None:
    """``None`` when the Hugging Face Hub answers an HTTP request; else why it cannot be used."""
    import requests
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        requests.head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except requests.RequestException as err:
        return f"{constants.ENDPOINT} is unreachable ({type(err).__name__})"
    return None


def ruler_length_problem(task: str, tokenizer: Any, lengths: Sequence[int]) -> str | None:
    """Why lm-eval's generator for ``task`` (``ruler_vt`` or ``ruler_cwe``) cannot reach ``lengths``, if it cannot.

    Measures the generator's own smallest prompt (its ``generate_input_output`` at the
    smallest size it tries) with ``tokenizer``, as the generator counts tokens.
    """
    if task == "ruler_vt":
        return _vt_problem(tokenizer, min(lengths))
    if task == "ruler_cwe":
        return _cwe_problem(tokenizer, lengths)
    return None


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text).input_ids)


def _longest_draw(make_text) -> int:
    """Max over a few seeded draws, leaving every RNG the generators use as it was (their data stays the same)."""
    from lm_eval.tasks.ruler import cwe_utils

    states = random.getstate(), np.random.get_state(), cwe_utils.RNG.getstate()
    try:
        lengths = []
        for seed in range(PROBE_DRAWS):
            random.seed(seed)
            np.random.seed(seed)
            cwe_utils.RNG.seed(seed)
            lengths.append(make_text())
        return max(lengths)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        cwe_utils.RNG.setstate(states[2])


def _vt_problem(tokenizer: Any, shortest: int) -> str | None:
    from lm_eval.tasks.ruler import vt_utils

    reserve = vt_utils.CONFIG["variable_tracking"]["tokens_to_generate"]

    def icl() -> int:
        text, answer = vt_utils.generate_input_output(5, 1, 4, is_icl=True)  # its smallest: 5 noise lines
        return _count(tokenizer, f"{text} {answer}")

    example = _longest_draw(icl) + reserve
    if example > VT_ICL_MAX_TOKENS:
        return (
            f"it needs {example} tokens for RULER's smallest in-context example, over the "
            f"{VT_ICL_MAX_TOKENS} lm-eval allows (its generator would retry forever)"
        )

    def prompt() -> int:
        text, _ = vt_utils.generate_input_output(10, 1, 4, is_icl=False)  # its smallest: 10 noise lines
        return _count(tokenizer, text)

    needed = _longest_draw(prompt) + example + reserve
    if needed > shortest:
        return f"it needs {needed} tokens for RULER's smallest prompt, over the length {shortest}"
    return None


def _cwe_problem(tokenizer: Any, lengths: Sequence[int]) -> str | None:
    from lm_eval.tasks.ruler import cwe_utils

    reserve = 120  # cwe's tokens_to_generate
    for length in sorted(lengths):

        def prompt(length: int = length) -> int:
            _, text, _ = cwe_utils.generate_input_output(10, length)  # its smallest: 10 words
            return _count(tokenizer, text)

        needed = _longest_draw(prompt) + reserve
        if needed > length:
            return f"it needs {needed} tokens for RULER's smallest prompt, over the length {length}"
    return None
