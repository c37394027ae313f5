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

The conversion reproduces Qwen2.5's own chat template token for token under torchtune's
``Qwen2_5Tokenizer.tokenize_messages``: tool outputs become ``ipython`` messages (wrapped
in ``<tool_response>`` inside a user turn), tool calls become ``{"name": ..., "arguments":
...}`` JSON between ``<tool_call>`` tokens, and a ``tools`` list is rendered into the system
prompt exactly as Qwen2.5's template does.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
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

# Qwen2.5's chat template, verbatim: its default system prompt when tools are given
# without a system message, and the tool block it appends to the system prompt.
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\n</tool_call>'
)
# Between two calls of one assistant turn; torchtune's ipython header and footer add the outer tags.
_CALL_SEPARATOR = "\n</tool_call>\n<tool_call>\n"


class ConversationError(ValueError):
    """A row that is not a valid conversation; the message says what is wrong."""


def openai_to_messages(
    row: Mapping[str, Any], forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS
) -> list[Message]:
    """A row with ``messages`` (OpenAI chat format) and optional ``tools``."""
    turns = _field(row, "messages")
    return to_torchtune_messages(turns, _tools(row), forbidden_tokens)


def sharegpt_to_messages(
    row: Mapping[str, Any], forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS
) -> list[Message]:
    """A row with ``conversations`` of ``{"from", "value"}`` turns and optional ``tools``.

    ``function_call`` turns hold one call (or a list of calls) as JSON ``{"name", "arguments"}``;
    ``observation`` turns are tool outputs.
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
    return to_torchtune_messages(turns, _tools(row), forbidden_tokens)


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
    turns: Sequence[Any], tools: list[Any] | None = None, forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS
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
    if tools:
        for number, tool in enumerate(tools):
            check_text(json.dumps(tool, ensure_ascii=False), f"tools schema {number}", forbidden_tokens)
        messages = _with_tools_in_system_prompt(messages, tools)
    return messages


def _message(role: str, content: str, calls: Any, index: int, forbidden_tokens: Collection[str]) -> Message:
    if role == "tool":
        return Message(role="ipython", content=content, masked=True, eot=False)
    if role != "assistant":
        return Message(role=role, content=content, masked=True)
    if not calls:
        return Message(role="assistant", content=content, masked=False)
    if not isinstance(calls, list):
        raise ConversationError(f"message {index} (assistant) has tool_calls that is not a list: {_short(calls)}")
    rendered = [_render_call(call, f"message {index} tool call {n}", forbidden_tokens) for n, call in enumerate(calls)]
    if not content:
        # torchtune's ipython header/footer put <tool_call> ... </tool_call> around the content.
        return Message(role="assistant", content=_CALL_SEPARATOR.join(rendered), masked=False, ipython=True, eot=False)
    # Qwen2.5 puts text before the calls, which torchtune's ipython path cannot express: spell the tags out.
    calls_text = "".join(f"\n<tool_call>\n{call}\n</tool_call>" for call in rendered)
    return Message(role="assistant", content=content + calls_text, masked=False, eot=False)


def _render_call(call: Any, where: str, forbidden_tokens: Collection[str]) -> str:
    """``{"name": ..., "arguments": {...}}`` as Qwen2.5's template writes it (arguments as JSON, not a string)."""
    function = call.get("function") if isinstance(call, Mapping) and call.get("function") is not None else call
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ConversationError(f"{where} has no function name: {_short(call)}")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        arguments = _json(arguments, f"{where} arguments")
    if not isinstance(arguments, Mapping):
        raise ConversationError(f"{where} arguments are not a JSON object: {_short(arguments)}")
    check_text(function["name"], f"{where} name", forbidden_tokens)
    rendered = json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)
    check_text(rendered, f"{where} arguments", forbidden_tokens)
    return rendered


def _follows_tool_call(turns: Sequence[Mapping[str, Any]], index: int) -> bool:
    previous = index - 1
    while previous >= 0 and turns[previous].get("role") == "tool":
        previous -= 1
    return previous >= 0 and turns[previous].get("role") == "assistant" and bool(turns[previous].get("tool_calls"))


def _with_tools_in_system_prompt(messages: list[Message], tools: list[Any]) -> list[Message]:
    has_system = messages[0].role == "system"
    system = messages[0].text_content if has_system else QWEN_DEFAULT_SYSTEM
    tool_lines = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    prompt = Message(role="system", content=system + _TOOLS_HEADER + tool_lines + _TOOLS_FOOTER, masked=True)
    return [prompt, *messages[1:]] if has_system else [prompt, *messages]


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
