"""Open-AgentRL's SFT rows (verl multi-turn parquet) -> the project's chat/tool JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from focusft.agent.openagentrl import convert_row, main
from focusft.data.messages import ConversationError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "code_interpreter",
            "description": "A tool for executing code.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "The code to execute."}},
                "required": ["code"],
            },
        },
    }
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 17 * 23? Put the answer in \\boxed{}."},
    {
        "role": "assistant",
        "content": "Let me compute it.",
        "tool_calls": [
            {"type": "function", "function": {"name": "code_interpreter", "arguments": '{"code": "print(17*23)"}'}}
        ],
    },
    {"role": "tool", "content": "stdout: 391\n"},
    {"role": "assistant", "content": "The product is \\boxed{391}."},
]


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_parquet_row_in_the_published_layout_converts_to_a_clean_chat_row(tmp_path: Path) -> None:
    source = _write_parquet(tmp_path / "sft.parquet", [{"messages": MESSAGES, "tools": json.dumps(TOOLS)}])
    read_back = pq.read_table(source).to_pylist()[0]["messages"]
    assert read_back[0]["tool_calls"] is None  # parquet gives every turn every field
    main([str(source), str(tmp_path / "out.jsonl")])
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row == {"messages": MESSAGES, "tools": TOOLS}


def test_the_converted_file_trains_through_the_chat_dataset(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from focusft.data.chat import chat_dataset
    from focusft.eval.checkpoint import load_tokenizer, read_checkpoint

    source = _write_parquet(tmp_path / "sft.parquet", [{"messages": MESSAGES, "tools": TOOLS}] * 2)
    main([str(source), str(tmp_path / "out.jsonl")])
    tokenizer = load_tokenizer(read_checkpoint(tiny_checkpoint))
    dataset = chat_dataset(tokenizer, source="json", data_files=str(tmp_path / "out.jsonl"), max_seq_len=4096)
    assert len(dataset) == 2
    labels = dataset[0]["labels"]
    trained = tokenizer.decode([t for t in labels if t >= 0])
    assert "print(17*23)" in trained and "\\boxed{391}" in trained and "stdout" not in trained  # tool output is context


@pytest.mark.parametrize(
    "row,message",
    [
        ({"conversations": []}, "row 3: no 'messages' list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "turn 0 has role 'robot'"),
        ({"messages": MESSAGES, "tools": "{oops"}, "'tools' is a string but not JSON"),
        ({"messages": MESSAGES[:2]}, "row 3"),  # ends with a user turn: the loader's own rule
    ],
)
def test_bad_rows_are_named(row: dict, message: str) -> None:
    with pytest.raises(ConversationError, match=message):
        convert_row(row, "sft.parquet row 3")


def test_a_file_that_is_not_parquet_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "bad.parquet"), str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err.strip()
    assert (
        exit_info.value.code == 2 and "\n" not in err and err.startswith("python -m focusft.agent.openagentrl: error:")
    )
