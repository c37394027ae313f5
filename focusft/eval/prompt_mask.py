"""Which prompt tokens training treats as context, for inference with the training mask.

docs/DESIGN.md section 3b, "Inference with the training mask": the prompt is prefilled with
the ``bidir_context`` mask, generation stays causal. Under that mask a context token sees
the tokens of its turn, a maximal run of context tokens; so the flags must be those
training gives the same tokens (``focusft.data.tokenize``): the body of an assistant turn
and its closing ``<|im_end|>`` are response, everything else (system, user, tool turns,
turn headers, the newlines between turns) is context. The prompt's last, open assistant
header is context; tokens after it (an answer already begun) are response.
"""

from __future__ import annotations

from collections.abc import Sequence


def prompt_context(tokens: Sequence[int], assistant_header: Sequence[int], im_end_id: int) -> list[bool]:
    """One flag per token, True where training would not train on it.

    ``assistant_header``: the tokens of ``<|im_start|>assistant\\n`` (as training tokenizes them).
    """
    header = list(assistant_header)
    flags = [True] * len(tokens)
    index = 0
    while index < len(tokens):
        if list(tokens[index : index + len(header)]) == header:
            index += len(header)
            while index < len(tokens):  # the answer, through its <|im_end|>
                flags[index] = False
                index += 1
                if tokens[index - 1] == im_end_id:
                    break
        else:
            index += 1
    return flags
