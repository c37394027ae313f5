"""Fitting a tokenized conversation into ``max_seq_len``: drop it, or cut it on the right or the left.

``truncate_left`` keeps the leading system message(s) and the latest whole exchanges (an
exchange starts at a user message) that fit. Cutting at an exchange boundary leaves every
kept token exactly as tokenizing the shortened conversation would, so no template token
is lost or doubled. A conversation whose last exchange alone does not fit is dropped.

``truncate_right`` keeps the first ``max_seq_len`` tokens, possibly ending inside a
response; no eos is added there, so the model is not taught to stop mid-answer.
"""

from __future__ import annotations

from typing import Literal, get_args

from focusft.data.tokenize import TokenizedConversation

LongSamplePolicy = Literal["drop", "truncate_right", "truncate_left"]
LONG_SAMPLE_POLICIES: tuple[str, ...] = get_args(LongSamplePolicy)


def check_long_sample_policy(policy: str) -> None:
    if policy not in LONG_SAMPLE_POLICIES:
        raise ValueError(f"Unknown long_sample_policy {policy!r}; expected one of {LONG_SAMPLE_POLICIES}.")


def fit_to_length(
    conversation: TokenizedConversation, max_seq_len: int, policy: LongSamplePolicy
) -> TokenizedConversation | None:
    """``conversation`` itself if it fits, else its truncation under ``policy``, or None to drop it."""
    check_long_sample_policy(policy)
    if len(conversation) <= max_seq_len:
        return conversation
    if policy == "truncate_right":
        return _prefix(conversation, max_seq_len)
    if policy == "truncate_left":
        return _latest_exchanges(conversation, max_seq_len)
    return None


def _prefix(conversation: TokenizedConversation, length: int) -> TokenizedConversation:
    spans = [(start, min(end, length)) for start, end in conversation.spans if start < length]
    return TokenizedConversation(
        tokens=conversation.tokens[:length],
        context=conversation.context[:length],
        spans=spans,
        roles=conversation.roles[: len(spans)],
    )


def _latest_exchanges(conversation: TokenizedConversation, max_seq_len: int) -> TokenizedConversation | None:
    roles, spans = conversation.roles, conversation.spans
    head = 0
    while head < len(roles) and roles[head] == "system":
        head += 1
    head_length = spans[head - 1][1] if head else 0
    for cut in range(head + 1, len(roles)):
        if roles[cut] == "user" and head_length + len(conversation) - spans[cut][0] <= max_seq_len:
            return _messages(conversation, [*range(head), *range(cut, len(roles))])
    return None


def _messages(conversation: TokenizedConversation, keep: list[int]) -> TokenizedConversation:
    tokens: list[int] = []
    context: list[bool] = []
    spans = []
    for index in keep:
        start, end = conversation.spans[index]
        spans.append((len(tokens), len(tokens) + end - start))
        tokens += conversation.tokens[start:end]
        context += conversation.context[start:end]
    return TokenizedConversation(
        tokens=tokens, context=context, spans=spans, roles=[conversation.roles[i] for i in keep]
    )
