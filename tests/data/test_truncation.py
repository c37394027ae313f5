"""Long samples: drop, truncate on the right, or keep the latest exchanges; and the counts of each."""

import json

import pytest

from focusft.data import chat_dataset
from focusft.data.messages import openai_to_messages
from focusft.data.tokenize import tokenize_conversation
from focusft.data.truncation import fit_to_length

SYSTEM = {"role": "system", "content": "Answer in one word."}
EXCHANGES = [
    [
        {"role": "user", "content": "Where is the key? Look it up."},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "find", "arguments": "{}"}}]},
        {"role": "tool", "content": "The key is in the box."},
        {"role": "assistant", "content": "box"},
    ],
    [{"role": "user", "content": "And the milk?"}, {"role": "assistant", "content": "kitchen"}],
    [{"role": "user", "content": "Who has the book now?"}, {"role": "assistant", "content": "Fred"}],
]


def tokenized(tokenizer, *exchanges, system=True):
    messages = ([SYSTEM] if system else []) + [m for exchange in exchanges for m in exchange]
    return tokenize_conversation(openai_to_messages({"messages": messages}), tokenizer)


@pytest.mark.parametrize("system", [True, False])
def test_truncate_left_keeps_the_system_prompt_and_the_latest_whole_exchanges(tokenizer, system):
    full = tokenized(tokenizer, *EXCHANGES, system=system)
    last_two = tokenized(tokenizer, *EXCHANGES[1:], system=system)
    last_one = tokenized(tokenizer, EXCHANGES[2], system=system)
    assert len(last_one) < len(last_two) < len(full)
    assert fit_to_length(full, len(full), "truncate_left") is full
    assert fit_to_length(full, len(full) - 1, "truncate_left") == last_two
    assert fit_to_length(full, len(last_two) - 1, "truncate_left") == last_one
    assert fit_to_length(full, len(last_one), "truncate_left") == last_one
    assert fit_to_length(full, len(last_one) - 1, "truncate_left") is None


def test_truncate_right_keeps_the_first_tokens_with_their_roles(tokenizer):
    full = tokenized(tokenizer, *EXCHANGES)
    cut = fit_to_length(full, 40, "truncate_right")
    assert cut.tokens == full.tokens[:40] and cut.context == full.context[:40]
    assert cut.spans[-1][1] == 40 and len(cut.spans) == len(cut.roles)
    assert fit_to_length(full, len(full) - 1, "drop") is None


def test_dataset_counts_what_it_dropped_and_truncated(tmp_path, tokenizer):
    rows = [
        {"messages": [SYSTEM, *EXCHANGES[1], *EXCHANGES[2]]},  # fits exactly
        {"messages": [SYSTEM, *EXCHANGES[0], *EXCHANGES[2]]},  # too long; its last exchange fits
        {"messages": [{"role": "user", "content": "Where is the milk? " * 20}, {"role": "assistant", "content": "x"}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    lengths = [len(tokenize_conversation(openai_to_messages(row), tokenizer)) for row in rows]
    max_seq_len = lengths[0]
    assert lengths[1] > max_seq_len and lengths[2] > max_seq_len

    def build(policy):
        return chat_dataset(
            tokenizer, source="json", data_files=str(path), max_seq_len=max_seq_len, long_sample_policy=policy
        )

    drop = build("drop")
    assert (drop.stats.samples, drop.stats.dropped_too_long, drop.stats.truncated) == (1, 2, 0)
    left = build("truncate_left")
    assert (left.stats.samples, left.stats.dropped_too_long, left.stats.truncated) == (2, 1, 1)
    assert left[1] == {**tokenized(tokenizer, EXCHANGES[2]).as_sample(), "sample_index": [1]}
    right = build("truncate_right")
    # The third row's long user turn fills the whole window: nothing is left to train on.
    assert (right.stats.samples, right.stats.truncated, right.stats.dropped_no_response) == (2, 1, 1)
    whole = tokenized(tokenizer, EXCHANGES[0], EXCHANGES[2]).as_sample()
    assert right[1] == {**{key: value[:max_seq_len] for key, value in whole.items()}, "sample_index": [1]}
