"""Which part of a conversation each token belongs to: sink, prompt, tool output or response.

The segments are read from the chat-template turn headers in the tokens themselves
(``<|im_start|>system``, ``<|im_start|>user``, ``<|im_start|>user\\n<tool_response>``,
``<|im_start|>assistant``), so any tokenized sample of this project works, including a
dataset item whose messages are gone. Message content can never hold ``<|im_start|>``
(``focusft.data.messages`` rejects it), so every header is a real turn boundary. A tool
output is a user turn that opens with ``<tool_response>``: the exact tokens Qwen2.5's
template (and torchtune's tokenizer) writes for a ``tool`` message, so the model cannot
tell the two apart either.
"""

from __future__ import annotations

from enum import IntEnum

import torch
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer

SINK_TOKENS = 5  # the paper's sink: key positions [0:5]


class Segment(IntEnum):
    """Token segments of the attention budget; every token is in exactly one."""

    SINK = 0  # the first SINK_TOKENS positions, whatever their turn
    PROMPT = 1  # system and user turns (tokens before the first header count here too)
    TOOL = 2  # tool outputs
    RESPONSE = 3  # assistant turns, template tokens included


SEGMENT_NAMES: tuple[str, ...] = tuple(segment.name.lower() for segment in Segment)


def turn_starts(tokens: list[int], tokenizer: Qwen2_5Tokenizer) -> list[int]:
    """Positions of the ``<|im_start|>`` tokens: where each turn begins."""
    return [index for index, token in enumerate(tokens) if token == tokenizer.im_start_id]


def token_segments(tokens: list[int], tokenizer: Qwen2_5Tokenizer, sink_tokens: int = SINK_TOKENS) -> torch.Tensor:
    """``[s]`` long tensor of :class:`Segment` values, one per token."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_bos=False, add_eos=False)

    headers = [  # longest first: a tool turn's header extends a user turn's
        ([tokenizer.im_start_id, *encode("user\n"), *encode("<tool_response>\n")], Segment.TOOL),
        ([tokenizer.im_start_id, *encode("assistant\n")], Segment.RESPONSE),
        ([tokenizer.im_start_id, *encode("user\n")], Segment.PROMPT),
        ([tokenizer.im_start_id, *encode("system\n")], Segment.PROMPT),
    ]
    segments = torch.full((len(tokens),), int(Segment.PROMPT), dtype=torch.long)
    starts = turn_starts(tokens, tokenizer)
    for start, end in zip(starts, [*starts[1:], len(tokens)]):
        # A header cut off by truncation, or an unknown role, is context: prompt.
        segment = next((s for header, s in headers if tokens[start : start + len(header)] == header), Segment.PROMPT)
        segments[start:end] = int(segment)
    segments[:sink_tokens] = int(Segment.SINK)
    return segments
