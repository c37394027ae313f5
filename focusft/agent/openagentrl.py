"""The paper's training data (Open-AgentRL's 3K agentic SFT set) -> this project's chat/tool JSONL.

The paper trains on "3K multi-turn agentic SFT samples" from Open-AgentRL (Demystifying
Reinforcement Learning in Agentic Reasoning, arXiv 2510.11701), published as the parquet
``full_sft_3k_shuffled_v4.parquet`` of the hub dataset ``Gen-Verse/Open-AgentRL-SFT-3K`` and
read by verl's multi-turn SFT dataset (``data.multiturn.messages_key=messages``,
``tools_key=tools``). A row holds:

- ``messages``: OpenAI chat turns (``system``/``user``/``assistant``/``tool``); assistant turns
  may carry ``tool_calls`` (``{"type": "function", "function": {"name", "arguments"}}``,
  arguments as an object or a JSON string);
- ``tools``: the OpenAI tool schemas (the ``code_interpreter`` tool), as a list or a JSON string.

Parquet stores a list of structs with the union of all fields, so a turn read back has every
field, ``None`` where it had none (``"tool_calls": None`` on a user turn); those are dropped.
The result is one ``{"messages": [...], "tools": [...]}`` object a line, which
``source: json`` + ``conversation_format: openai`` trains, and every row is checked with the
same rules the training data loader applies, so a bad row is named here, not mid-training.

    python -m focusft.agent.openagentrl full_sft_3k_shuffled_v4.parquet data/open_agentrl_sft.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from focusft.data.messages import ConversationError, openai_to_messages
from focusft.data.sources import BadRowError, load_rows

ROLES = ("system", "user", "assistant", "tool")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def convert_row(row: Any, where: str) -> dict[str, Any]:
    """One Open-AgentRL (verl multi-turn) row as a project chat row.

    Raises:
        ConversationError: no ``messages`` list, an unknown role, a ``tools`` value that is
            neither a list nor a JSON list, or a conversation the training loader would refuse.
    """
    if isinstance(row, BadRowError):
        raise ConversationError(f"{where}: {row}")
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        raise ConversationError(f"{where}: no 'messages' list")
    messages = [_without_nulls(turn) for turn in row["messages"]]
    for index, turn in enumerate(messages):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            role = turn.get("role") if isinstance(turn, dict) else turn
            raise ConversationError(f"{where}: turn {index} has role {role!r}; expected one of {ROLES}")
        if turn["role"] == "assistant" and not turn.get("tool_calls"):
            turn.pop("tool_calls", None)
    converted: dict[str, Any] = {"messages": messages}
    tools = row.get("tools")
    if isinstance(tools, str) and tools.strip():
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as error:
            raise ConversationError(f"{where}: 'tools' is a string but not JSON ({error.msg})") from None
    if tools:
        if not isinstance(tools, list):
            raise ConversationError(f"{where}: 'tools' must be a list of tool schemas, got {type(tools).__name__}")
        converted["tools"] = _without_nulls(tools)
    try:
        openai_to_messages(converted)
    except ConversationError as error:
        raise ConversationError(f"{where}: {error}") from None
    return converted


def convert_file(source: Path, target: Path) -> int:
    """Convert every row of ``source`` (``.parquet``, ``.jsonl`` or ``.json``) into ``target``; the row count."""
    kind = "parquet" if source.suffix == ".parquet" else "json"
    rows = [convert_row(row, where) for where, row in load_rows(kind, str(source))]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m focusft.agent.openagentrl", description="Open-AgentRL SFT parquet/JSONL -> chat/tool JSONL."
    )
    parser.add_argument("source", type=Path, help="full_sft_3k_shuffled_v4.parquet (or a JSONL of the same rows).")
    parser.add_argument("target", type=Path, help="Output JSONL for source: json, conversation_format: openai.")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.exit(2, f"{parser.prog}: error: {args.source} does not exist\n")
    try:
        count = convert_file(args.source, args.target)
    except (ValueError, OSError) as error:  # a bad row, or pyarrow's ArrowInvalid for a file that is not parquet
        parser.exit(2, f"{parser.prog}: error: {str(error).splitlines()[0]}\n")
    print(f"wrote {count} conversations to {args.target}", file=sys.stderr)


if __name__ == "__main__":
    main()
