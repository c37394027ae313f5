"""Messages -> tokens with a per-token context flag, via torchtune's Qwen2.5 ``tokenize_messages``.

``tokenize_messages`` returns one mask value per token, copied from its message's
``masked`` flag. Tagging the messages with alternating flags makes every message's token
span visible, so the chat template is never re-implemented here: the tokens are exactly
torchtune's, and the roles are assigned per span.

What is trained on (``context == False``): an assistant message's content (tool-call JSON
and its ``<tool_call>`` tokens included) and the ``<|im_end|>`` that closes it, so the model
learns to stop (Qwen's own SFT practice; for the final message this is the eos torchtune
appends). Context: everything else, i.e. system, user and tool messages with their
template tokens, the newline after an assistant's ``<|im_end|>`` (template glue the model
never generates) and, unless ``train_on_assistant_header``, ``<|im_start|>assistant\\n``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torchtune.data import Message
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer

from focusft.split_decoder import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedConversation:
    """Tokens and context flags of one conversation, with each message's token span."""

    tokens: list[int]
    context: list[bool]
    spans: list[tuple[int, int]]  # [start, end) of each message, the final eos in the last one
    roles: list[str]  # torchtune roles of the messages (tool outputs are "ipython")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_trained(self) -> int:
        return len(self.context) - sum(self.context)

    def as_sample(self) -> dict[str, list]:
        """The sample ``collate_focus_batch`` takes: unshifted labels, ``IGNORE_INDEX`` on context."""
        labels = [IGNORE_INDEX if c else t for t, c in zip(self.tokens, self.context)]
        return {"tokens": list(self.tokens), "labels": labels, "context": list(self.context)}


def tokenize_conversation(
    messages: list[Message], tokenizer: Qwen2_5Tokenizer, *, train_on_assistant_header: bool = False
) -> TokenizedConversation:
    """Tokenize a whole conversation (never truncated here) and flag its context tokens."""
    if tokenizer.max_seq_len is not None:
        tokenizer = copy.copy(tokenizer)  # truncation is the caller's policy, not the tokenizer's
        tokenizer.max_seq_len = None
    tagged = [
        Message(role=m.role, content=m.content, masked=bool(i % 2), ipython=m.ipython, eot=m.eot)
        for i, m in enumerate(messages)
    ]
    tokens, tags = tokenizer.tokenize_messages(tagged, add_eos=True)
    spans = _runs(tags)
    if len(spans) != len(messages):
        raise ValueError(f"Tokenizer produced {len(spans)} message spans for {len(messages)} messages.")
    header = [tokenizer.im_start_id, *tokenizer.encode("assistant\n", add_bos=False, add_eos=False)]
    turn_end = [tokenizer.im_end_id, *tokenizer.encode("\n", add_bos=False, add_eos=False)]
    context = [True] * len(tokens)
    for message, (start, end) in zip(messages, spans):
        if message.role != "assistant":
            continue
        if tokens[start : start + len(header)] != header:
            raise ValueError(
                "An assistant message does not start with <|im_start|>assistant\\n; FocuSFT's data pipeline "
                "needs torchtune's Qwen2.5 tokenizer without a prompt_template."
            )
        trained_start = start if train_on_assistant_header else start + len(header)
        trained_end = end - len(turn_end) + 1 if tokens[end - len(turn_end) : end] == turn_end else end
        context[trained_start:trained_end] = [False] * (trained_end - trained_start)
    return TokenizedConversation(tokens=tokens, context=context, spans=spans, roles=[m.role for m in messages])


def _runs(tags: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of equal values."""
    bounds = [0, *(i for i in range(1, len(tags)) if tags[i] != tags[i - 1]), len(tags)]
    return list(zip(bounds[:-1], bounds[1:]))
