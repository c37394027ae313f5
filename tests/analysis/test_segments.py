"""Segments read from the turn headers agree with the message spans the tokenizer reports."""

import torch

from focusft.analysis.sample import item_sample
from focusft.analysis.segments import Segment, token_segments, turn_starts
from focusft.data.messages import to_torchtune_messages
from focusft.data.tokenize import tokenize_conversation

ROLE_SEGMENT = {
    "system": Segment.PROMPT,
    "user": Segment.PROMPT,
    "ipython": Segment.TOOL,
    "assistant": Segment.RESPONSE,
}

CALL = {"function": {"name": "search", "arguments": {"query": "key"}}}
TURNS = [
    {"role": "system", "content": "You find things."},
    {"role": "user", "content": "Where is the key?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL, CALL]},
    {"role": "tool", "content": "note 1: the key is in the office"},
    {"role": "tool", "content": "note 2: nothing"},  # a second output in the same user turn
    {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL]},
    {"role": "tool", "content": "note 3: the office"},
    {"role": "user", "content": "<tool_response> is only text here, after a header"},
    {"role": "assistant", "content": "office"},
]


def expected_segments(conversation, sink_tokens):
    expected = torch.empty(len(conversation), dtype=torch.long)
    for role, (start, end) in zip(conversation.roles, conversation.spans):
        expected[start:end] = int(ROLE_SEGMENT[role])
    expected[:sink_tokens] = int(Segment.SINK)
    return expected


def test_segments_match_the_message_spans(tokenizer):
    conversation = tokenize_conversation(to_torchtune_messages(TURNS), tokenizer)
    for sink_tokens in (0, 5):
        segments = token_segments(conversation.tokens, tokenizer, sink_tokens)
        assert torch.equal(segments, expected_segments(conversation, sink_tokens))
    # One span per turn: the two consecutive tool outputs share one user turn, and so one span.
    assert conversation.roles.count("ipython") == 2
    assert turn_starts(conversation.tokens, tokenizer) == [start for start, _ in conversation.spans]


def test_a_packed_item_is_measured_on_its_first_document(tokenizer):
    first = tokenize_conversation(to_torchtune_messages(TURNS), tokenizer)
    second = tokenize_conversation(to_torchtune_messages(TURNS[:2] + TURNS[-1:]), tokenizer)
    item = {
        "tokens": first.tokens + second.tokens + [0, 0],
        "context": first.context + second.context + [True, True],
        "doc": [0] * len(first) + [1] * len(second) + [2, 2],
        "valid": [True] * (len(first) + len(second)) + [False, False],
    }
    sample = item_sample(item, tokenizer, "packed row")
    assert sample.tokens.tolist() == first.tokens
    assert torch.equal(sample.segments, expected_segments(first, 5))
