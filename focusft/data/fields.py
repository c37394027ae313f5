"""Which fields of a chat row reach the training tokens, and which do not (to be reported, never dropped unseen).

The trained tokens are what the chat template renders at inference for the same
conversation and tools (:mod:`focusft.data.tokenize`). Qwen2.5's template reads only
these fields, so these are the ones the converters in :mod:`focusft.data.messages` use:

- OpenAI rows: ``messages`` and ``tools``; a message's ``role`` and ``content``, and an
  assistant message's ``tool_calls``, each ``{"function": {"name", "arguments"}}`` or
  ``{"name", "arguments"}``;
- ShareGPT / LLaMA-Factory rows: ``conversations``, ``system`` (the row's system prompt)
  and ``tools``; a turn's ``from`` and ``value``; a ``function_call`` value's calls as above.

Everything else (OpenAI's ``tool_call_id``, a message's ``name``, a tool call's ``id`` and
``type``, ``reasoning_content``, LLaMA-Factory's ``images``, a dataset's own ``id`` column, ...)
is not rendered, as the template does not render it at inference either. :func:`unrendered_fields`
names those fields of one row so that a dataset build can report them once
(:func:`focusft.data.chat.build_dataset`). A value that carries nothing (``None``, ``""``,
``[]``, ``{}``; Arrow writes ``None`` for columns a row lacks) is not reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

OPENAI_ROW_FIELDS = frozenset({"messages", "tools"})
OPENAI_MESSAGE_FIELDS = frozenset({"role", "content"})  # + tool_calls on assistant messages
SHAREGPT_ROW_FIELDS = frozenset({"conversations", "system", "tools"})
SHAREGPT_TURN_FIELDS = frozenset({"from", "value"})
CALL_FIELDS = frozenset({"name", "arguments"})


def unrendered_fields(row: Any, conversation_format: str) -> list[str]:
    """Paths of the fields of ``row`` that carry a value but are not rendered, e.g. ``messages[].tool_call_id``.

    Only fields are judged here; whether the row is a valid conversation is
    :mod:`focusft.data.messages`' job, so malformed parts are skipped.
    """
    if not isinstance(row, Mapping):
        return []
    if conversation_format == "sharegpt":
        paths = _sharegpt(row)
    else:
        paths = _openai(row)
    return list(dict.fromkeys(paths))


def _openai(row: Mapping[str, Any]) -> Iterator[str]:
    yield from _extra(row, OPENAI_ROW_FIELDS, "")
    for message in _mappings(row.get("messages")):
        assistant = message.get("role") == "assistant"
        yield from _extra(message, OPENAI_MESSAGE_FIELDS | ({"tool_calls"} if assistant else set()), "messages[].")
        if assistant:
            for call in _mappings(message.get("tool_calls")):
                yield from _call(call, "messages[].tool_calls[].")


def _sharegpt(row: Mapping[str, Any]) -> Iterator[str]:
    yield from _extra(row, SHAREGPT_ROW_FIELDS, "")
    for turn in _mappings(row.get("conversations")):
        yield from _extra(turn, SHAREGPT_TURN_FIELDS, "conversations[].")
        if turn.get("from") == "function_call" and isinstance(turn.get("value"), str):
            try:
                calls = json.loads(turn["value"])
            except json.JSONDecodeError:
                continue
            for call in _mappings(calls if isinstance(calls, list) else [calls]):
                yield from _call(call, "conversations[].value (function_call).")


def _call(call: Mapping[str, Any], prefix: str) -> Iterator[str]:
    """A tool call is ``{"function": {"name", "arguments"}, ...}`` or ``{"name", "arguments"}``."""
    function = call.get("function")
    if isinstance(function, Mapping):
        yield from _extra(call, {"function"}, prefix)
        yield from _extra(function, CALL_FIELDS, prefix + "function.")
    else:
        yield from _extra(call, CALL_FIELDS, prefix)


def _extra(mapping: Mapping[str, Any], used: frozenset[str] | set[str], prefix: str) -> Iterator[str]:
    for key, value in mapping.items():
        if key not in used and value not in (None, "", [], {}):
            yield f"{prefix}{key}"


def _mappings(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, Mapping))
