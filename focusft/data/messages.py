"""Chat rows (OpenAI ``messages`` or ShareGPT ``conversations``) -> validated torchtune ``Message``\\ s.

Both formats are first normalised to OpenAI-style turns and then checked and converted by
one function, so the rules below hold for every source:

- roles are system, user, assistant, tool; content is a string (an assistant turn that
  calls tools may have no content);
- a tool turn follows an assistant turn with ``tool_calls`` (or another tool turn);
- the conversation ends with an assistant turn;
- no text (message content, tool-call names and arguments, the tools schema) holds a
  chat-control token such as ``<|im_start|>``, ``<|im_end|>`` or ``<|endoftext|>`` (the
  dataset builders pass every special token of the tokenizer): the tokenizer would turn
  it into the real token, forging a turn boundary or an end of text inside a target;
- all text is valid Unicode (no lone surrogates such as ``\ud800`` from JSON escapes).

The messages are rendered by :func:`focusft.data.tokenize.tokenize_conversation` exactly
as Qwen2.5-Instruct's chat template renders them (see there). Conversion rules:

- a conversation without a system message gets ``default_system_prompt`` (Qwen2.5's
  "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." unless
  configured; ``None``: no system turn), as the template inserts it at inference;
- a ``tools`` list is appended to the system prompt as the template does (each schema
  as ``json.dumps(schema, ensure_ascii=False)`` on its own line); with tools there is
  always a system turn (its text starts with ``default_system_prompt``, or with nothing
  when that is ``None``);
- a ShareGPT row's ``system`` field (LLaMA-Factory) is that conversation's system prompt;
- a tool call is written ``<tool_call>\\n{"name": "NAME", "arguments": ARGS}\\n</tool_call>``,
  the name verbatim and ARGS as ``json.dumps(..., ensure_ascii=False)``, as the template's
  ``tojson`` writes it. OpenAI's ``arguments`` *string* is parsed
  into an object first, as transformers expects and vLLM's OpenAI server does before it
  applies the template:
  the template's ``arguments | tojson`` would otherwise write the string quoted. Keys keep
  their order; only the JSON's whitespace and escapes are normalised;
- tool outputs become ``ipython`` messages; consecutive ones share one user turn, each in
  ``<tool_response>`` tags.

Fields the template does not read are not rendered; :mod:`focusft.data.fields` names them
so that a dataset build reports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from torchtune.data import Message

OPENAI_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
# ShareGPT "from" values (as written by FastChat and LLaMA-Factory) -> OpenAI roles.
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
# Rejected in any text even without a tokenizer at hand; builders add the tokenizer's special tokens.
CHAT_CONTROL_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

# Qwen2.5's chat template, verbatim: its default system prompt (when the conversation has no
# system message) and the tool block it appends to the system prompt.
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Default of the dataset builders' default_system_prompt: the model family's own (focusft.models).
FAMILY_DEFAULT_SYSTEM = object()
_TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\n</tool_call>'
)


class ConversationError(ValueError):
    """A row that is not a valid conversation; the message says what is wrong."""


def openai_to_messages(
    row: Mapping[str, Any],
    forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS,
    default_system_prompt: str | None = QWEN_DEFAULT_SYSTEM,
    convert: Callable[..., list[Message]] | None = None,
) -> list[Message]:
    """A row with ``messages`` (OpenAI chat format) and optional ``tools``.

    ``convert`` renders the turns for a model family (:mod:`focusft.models`); default Qwen2.5's
    :func:`to_torchtune_messages`.
    """
    turns = _field(row, "messages")
    return (convert or to_torchtune_messages)(turns, _tools(row), forbidden_tokens, default_system_prompt)


def sharegpt_to_messages(
    row: Mapping[str, Any],
    forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS,
    default_system_prompt: str | None = QWEN_DEFAULT_SYSTEM,
    convert: Callable[..., list[Message]] | None = None,
) -> list[Message]:
    """A row with ``conversations`` of ``{"from", "value"}`` turns and optional ``system`` and ``tools``.

    ``function_call`` turns hold one call (or a list of calls) as JSON ``{"name", "arguments"}``;
    ``observation`` turns are tool outputs. ``system`` (LLaMA-Factory's column) is the row's
    system prompt: it takes the place of ``default_system_prompt``; ``""`` or ``null`` means the
    row has none, as in LLaMA-Factory, so the default applies. A ``system`` turn may lead the
    conversation instead; both with different text is an error. ``convert``: as in
    :func:`openai_to_messages`.
    """
    turns = []
    for index, turn in enumerate(_field(row, "conversations")):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"turn {index} is not an object with 'from' and 'value': {_short(turn)}")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise ConversationError(
                f"turn {index} has unknown role {turn['from']!r}; expected one of {sorted(SHAREGPT_ROLES)}"
            )
        value = turn["value"]
        if turn["from"] != "function_call":
            turns.append({"role": role, "content": value})
            continue
        if not isinstance(value, str):
            raise ConversationError(f"turn {index} (function_call) has non-string value {_short(value)}")
        calls = _json(value, f"turn {index} (function_call)")
        turns.append(
            {"role": "assistant", "content": None, "tool_calls": calls if isinstance(calls, list) else [calls]}
        )
    system = _system(row, turns, forbidden_tokens)
    return (convert or to_torchtune_messages)(
        turns, _tools(row), forbidden_tokens, default_system_prompt if system is None else system
    )


def check_text(text: str, where: str, forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS) -> None:
    """Raise if ``text`` holds a forbidden (special) token or is not valid Unicode."""
    for token in forbidden_tokens:
        if token in text:
            raise ConversationError(f"{where} contains the special token {token}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConversationError(
            f"{where} holds a lone surrogate {text[err.start]!r} at character {err.start}, which is not valid Unicode"
        ) from None


def to_torchtune_messages(
    turns: Sequence[Any],
    tools: list[Any] | None = None,
    forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS,
    default_system_prompt: str | None = QWEN_DEFAULT_SYSTEM,
) -> list[Message]:
    """Validate OpenAI-style turns and convert them; only assistant messages are unmasked."""
    if not turns:
        raise ConversationError("conversation is empty")
    messages: list[Message] = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or "role" not in turn:
            raise ConversationError(f"message {index} is not an object with a 'role': {_short(turn)}")
        role = turn["role"]
        if role not in OPENAI_ROLES:
            raise ConversationError(f"message {index} has unknown role {role!r}; expected one of {OPENAI_ROLES}")
        calls = turn.get("tool_calls") if role == "assistant" else None
        content = turn.get("content")
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise ConversationError(f"message {index} ({role}) has non-string content {_short(content)}")
        check_text(content, f"message {index} ({role})", forbidden_tokens)
        if role == "tool" and not _follows_tool_call(turns, index):
            raise ConversationError(f"message {index} (tool) does not follow an assistant message with tool_calls")
        messages.append(_message(role, content, calls, index, forbidden_tokens))
    if messages[-1].role != "assistant":
        raise ConversationError(f"conversation ends with a {turns[-1]['role']} message, not an assistant message")
    if messages[0].role != "system" and (default_system_prompt is not None or tools):
        messages.insert(0, Message(role="system", content=default_system_prompt or "", masked=True))
    if tools:
        for number, tool in enumerate(tools):
            check_text(json.dumps(tool, ensure_ascii=False), f"tools schema {number}", forbidden_tokens)
        messages[0] = _with_tools(messages[0], tools)
    return messages


def _message(role: str, content: str, calls: Any, index: int, forbidden_tokens: Collection[str]) -> Message:
    if role == "tool":
        return Message(role="ipython", content=content, masked=True)
    if role != "assistant" or not calls:
        return Message(role=role, content=content, masked=role != "assistant")
    if not isinstance(calls, list):
        raise ConversationError(f"message {index} (assistant) has tool_calls that is not a list: {_short(calls)}")
    rendered = "".join(
        f"\n<tool_call>\n{_render_call(call, f'message {index} tool call {n}', forbidden_tokens)}\n</tool_call>"
        for n, call in enumerate(calls)
    )
    # The template writes "\n" + content before the calls only when there is content.
    return Message(role="assistant", content=content + rendered if content else rendered[1:], masked=False)


def _render_call(call: Any, where: str, forbidden_tokens: Collection[str]) -> str:
    """``{"name": "NAME", "arguments": {...}}`` as Qwen2.5's template writes it: name verbatim, arguments as JSON."""
    function = call.get("function") if isinstance(call, Mapping) and call.get("function") is not None else call
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ConversationError(f"{where} has no function name: {_short(call)}")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        arguments = _json(arguments, f"{where} arguments")
    if not isinstance(arguments, Mapping):
        raise ConversationError(f"{where} arguments are not a JSON object: {_short(arguments)}")
    check_text(function["name"], f"{where} name", forbidden_tokens)
    rendered = f'{{"name": "{function["name"]}", "arguments": {json.dumps(arguments, ensure_ascii=False)}}}'
    check_text(rendered, f"{where} arguments", forbidden_tokens)
    return rendered


def _follows_tool_call(turns: Sequence[Mapping[str, Any]], index: int) -> bool:
    previous = index - 1
    while previous >= 0 and turns[previous].get("role") == "tool":
        previous -= 1
    return previous >= 0 and turns[previous].get("role") == "assistant" and bool(turns[previous].get("tool_calls"))


def _with_tools(system: Message, tools: list[Any]) -> Message:
    tool_lines = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    return Message(role="system", content=system.text_content + _TOOLS_HEADER + tool_lines + _TOOLS_FOOTER, masked=True)


def _system(
    row: Mapping[str, Any], turns: Sequence[Mapping[str, Any]], forbidden_tokens: Collection[str]
) -> str | None:
    """The row's own ``system`` prompt (ShareGPT / LLaMA-Factory), or ``None`` when it has none."""
    system = row.get("system")
    if system is None or system == "":
        return None
    if not isinstance(system, str):
        raise ConversationError(f"row's 'system' is not a string: {_short(system)}")
    check_text(system, "row's 'system'", forbidden_tokens)
    if turns and turns[0]["role"] == "system" and turns[0]["content"] != system:
        raise ConversationError(
            f"row has a 'system' field {_short(system)} and a different system turn {_short(turns[0]['content'])}"
        )
    return system


def _field(row: Mapping[str, Any], key: str) -> list[Any]:
    if not isinstance(row, Mapping):
        raise ConversationError(f"row is not an object: {_short(row)}")
    value = row.get(key)
    if value is None:
        raise ConversationError(f"row has no {key!r} (keys: {sorted(row)})")
    if not isinstance(value, list):
        raise ConversationError(f"row's {key!r} is not a list: {_short(value)}")
    return value


def _tools(row: Mapping[str, Any]) -> list[Any] | None:
    """The optional ``tools`` column: a list of schemas, or that list as a JSON string (parquet, ShareGPT)."""
    tools = row.get("tools")
    if isinstance(tools, str):
        tools = _json(tools, "tools") if tools.strip() else None
    if tools is not None and not isinstance(tools, list):
        raise ConversationError(f"'tools' is not a list of tool schemas: {_short(tools)}")
    return tools or None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConversationError(f"{where} is not valid JSON ({err.msg}): {_short(text)}") from None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
