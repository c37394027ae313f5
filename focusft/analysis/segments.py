"""Which part of a conversation each token belongs to: sink, prompt, tool output or response.

The segments are read from the chat-template turn headers in the tokens themselves, as
the model family (:mod:`focusft.models`) writes them (Qwen: ``<|im_start|>system``,
``<|im_start|>user``, ``<|im_start|>user\\n<tool_response>``, ``<|im_start|>assistant``;
Llama 3: ``<|start_header_id|>ROLE<|end_header_id|>`` with ``ipython`` for tool outputs),
so any tokenized sample of this project works, including a dataset item whose messages are
gone. Message content can never hold a special token (``focusft.data.messages`` rejects
it), so every header is a real turn boundary. A Qwen tool output is a user turn that opens
with ``<tool_response>``: the exact tokens the template writes for a ``tool`` message, so
the model cannot tell the two apart either.
"""

from __future__ import annotations

from enum import IntEnum

import torch
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer

from focusft.models import family_for_tokenizer

SINK_TOKENS = 5  # the paper's sink: key positions [0:5]


class Segment(IntEnum):
    """Token segments of the attention budget; every token is in exactly one."""

    SINK = 0  # the first SINK_TOKENS positions, whatever their turn
    PROMPT = 1  # system and user turns (tokens before the first header count here too)
    TOOL = 2  # tool outputs
    RESPONSE = 3  # assistant turns, template tokens included


SEGMENT_NAMES: tuple[str, ...] = tuple(segment.name.lower() for segment in Segment)


def turn_starts(tokens: list[int], tokenizer: Qwen2_5Tokenizer) -> list[int]:
    """Positions of the tokens that open a turn (``<|im_start|>``, ``<|start_header_id|>``)."""
    start, _ = family_for_tokenizer(tokenizer).turn_headers(tokenizer)
    return [index for index, token in enumerate(tokens) if token == start]


def token_segments(tokens: list[int], tokenizer: Qwen2_5Tokenizer, sink_tokens: int = SINK_TOKENS) -> torch.Tensor:
    """``[s]`` long tensor of :class:`Segment` values, one per token."""

    _, family_headers = family_for_tokenizer(tokenizer).turn_headers(tokenizer)
    kinds = {"prompt": Segment.PROMPT, "tool": Segment.TOOL, "response": Segment.RESPONSE}
    headers = [(header, kinds[kind]) for header, kind in family_headers]
    segments = torch.full((len(tokens),), int(Segment.PROMPT), dtype=torch.long)
    starts = turn_starts(tokens, tokenizer)
    for start, end in zip(starts, [*starts[1:], len(tokens)]):
        # A header cut off by truncation, or an unknown role, is context: prompt.
        segment = next((s for header, s in headers if tokens[start : start + len(header)] == header), Segment.PROMPT)
        segments[start:end] = int(segment)
    segments[:sink_tokens] = int(Segment.SINK)
    return segments
