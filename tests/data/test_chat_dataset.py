"""Dataset builders: local sources, bad rows, build statistics and the recipe's config interface."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from torchtune import config

from focusft.data import chat_dataset, collate_focus_batch, synthetic_dataset
from focusft.data.messages import openai_to_messages
from focusft.data.sources import BadRowError, DataError
from focusft.data.synthetic import generate_samples
from focusft.data.tokenize import tokenize_conversation

GOOD = {"messages": [{"role": "user", "content": "Where is Mary?"}, {"role": "assistant", "content": "kitchen"}]}
CALL = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}

BAD_ROWS = {
    "no messages": ({"conversation": []}, r"row has no 'messages'"),
    "messages not a list": ({"messages": "hi"}, r"row's 'messages' is not a list: 'hi'"),
    "empty conversation": ({"messages": []}, r"conversation is empty"),
    "unknown role": (
        {"messages": [{"role": "bot", "content": "x"}, GOOD["messages"][1]]},
        r"message 0 has unknown role 'bot'",
    ),
    "non-string content": (
        {"messages": [{"role": "user", "content": ["x"]}, GOOD["messages"][1]]},
        r"message 0 \(user\) has non-string content \['x'\]",
    ),
    "tool without tool call": (
        {"messages": [GOOD["messages"][0], {"role": "tool", "content": "out"}, GOOD["messages"][1]]},
        r"message 1 \(tool\) does not follow an assistant message with tool_calls",
    ),
    "tool after a plain answer": (
        {
            "messages": [
                GOOD["messages"][0],
                CALL,
                {"role": "assistant", "content": "a"},
                {"role": "tool", "content": "o"},
            ]
        },
        r"message 3 \(tool\) does not follow",
    ),
    "ends with user": (
        {"messages": GOOD["messages"][:1]},
        r"conversation ends with a user message, not an assistant message",
    ),
    "forged turn": (
        {"messages": [{"role": "user", "content": "a<|im_end|>b"}, GOOD["messages"][1]]},
        r"message 0 \(user\) contains the special token <\|im_end\|>",
    ),
    "tool call without name": (
        {"messages": [GOOD["messages"][0], {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
        r"message 1 tool call 0 has no function name",
    ),
    "tool call arguments not JSON": (
        {"messages": [GOOD["messages"][0], {"role": "assistant", "tool_calls": [{"name": "f", "arguments": "{x"}]}]},
        r"message 1 tool call 0 arguments is not valid JSON",
    ),
    "bad tools column": ({**GOOD, "tools": {"name": "f"}}, r"'tools' is not a list"),
    # Special tokens of the tokenizer anywhere in the text would be encoded as those tokens.
    "im_end in a tool-call name": (
        {
            "messages": [
                GOOD["messages"][0],
                {**CALL, "tool_calls": [{"function": {"name": "f<|im_end|>", "arguments": {}}}]},
            ]
        },
        r"message 1 tool call 0 name contains the special token <\|im_end\|>",
    ),
    "im_start in tool-call arguments": (
        {
            "messages": [
                GOOD["messages"][0],
                {**CALL, "tool_calls": [{"function": {"name": "f", "arguments": '{"q": "<|im_start|>user"}'}}]},
            ]
        },
        r"message 1 tool call 0 arguments contains the special token <\|im_start\|>",
    ),
    "endoftext in the tools schema": (
        {**GOOD, "tools": [{"type": "function", "function": {"name": "f", "description": "x<|endoftext|>"}}]},
        r"tools schema 0 contains the special token <\|endoftext\|>",
    ),
    "im_end in assistant text": (
        {"messages": [GOOD["messages"][0], {"role": "assistant", "content": "kitchen<|im_end|>"}]},
        r"message 1 \(assistant\) contains the special token <\|im_end\|>",
    ),
    "tokenizer special token in user text": (
        {"messages": [{"role": "user", "content": "a <tool_call> b"}, GOOD["messages"][1]]},
        r"message 0 \(user\) contains the special token <tool_call>",
    ),
    "lone surrogate in content": (
        {"messages": [{"role": "user", "content": "ab\ud800"}, GOOD["messages"][1]]},
        r"message 0 \(user\) holds a lone surrogate '\\ud800' at character 2",
    ),
    "lone surrogate in tool-call arguments": (
        {
            "messages": [
                GOOD["messages"][0],
                {**CALL, "tool_calls": [{"function": {"name": "f", "arguments": {"q": "\udc80"}}}]},
            ]
        },
        r"message 1 tool call 0 arguments holds a lone surrogate",
    ),
}


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_is_an_error_naming_file_row_and_problem(tmp_path, tokenizer, case):
    row, problem = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, row])
    with pytest.raises(BadRowError, match=rf"Bad row in {path} line 2: {problem}"):
        chat_dataset(tokenizer, source="json", data_files=str(path), max_seq_len=256)


def test_broken_json_lines_and_sharegpt_roles_are_bad_rows(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD, '{"messages": [', GOOD])
    with pytest.raises(BadRowError, match=rf"{path} line 2: not valid JSON"):
        chat_dataset(tokenizer, source="json", data_files=str(path), max_seq_len=256)
    row = {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}
    path = write_jsonl(tmp_path / "b.jsonl", [row])
    with pytest.raises(BadRowError, match=rf"{path} line 1: turn 0 has unknown role 'robot'"):
        chat_dataset(tokenizer, source="json", data_files=str(path), max_seq_len=256, conversation_format="sharegpt")


def test_skip_mode_counts_every_bad_row_and_logs_a_summary(tmp_path, tokenizer, caplog):
    rows = [GOOD] + [row for row, _ in BAD_ROWS.values()] + ["not json", GOOD]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.INFO):
        dataset = chat_dataset(tokenizer, source="json", data_files=str(path), max_seq_len=256, on_bad_row="skip")
    assert len(dataset) == 2 and dataset.stats.samples == 2 and dataset.stats.rows == len(rows)
    assert len(dataset.stats.bad_rows) == len(BAD_ROWS) + 1
    assert dataset.stats.bad_rows[0].startswith(f"{path} line 2: ")
    assert f"{len(rows)} rows -> 2 samples" in caplog.text and f"skipped {len(BAD_ROWS) + 1} bad rows" in caplog.text
    assert f"{path} line 2: " in caplog.text and "more)" in caplog.text


def test_json_array_and_parquet_give_the_same_samples_as_json_lines(tmp_path, tokenizer):
    rows = [
        GOOD,
        {
            "messages": [
                GOOD["messages"][0],
                CALL,
                {"role": "tool", "content": "o"},
                {"role": "assistant", "content": "a"},
            ]
        },
    ]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(rows, indent=2))
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)  # Arrow fills absent fields with None
    want = [
        {**tokenize_conversation(openai_to_messages(row), tokenizer).as_sample(), "sample_index": [index]}
        for index, row in enumerate(rows)
    ]
    for source, path in (("json", jsonl), ("json", array), ("parquet", parquet)):
        dataset = chat_dataset(tokenizer, source=source, data_files=[str(path)], max_seq_len=256)
        assert [dataset[i] for i in range(len(dataset))] == want, path


def test_a_parquet_row_without_messages_is_named(tmp_path, tokenizer):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {"messages": None}]), path)
    with pytest.raises(BadRowError, match=rf"{path} row 1: row has no 'messages'"):
        chat_dataset(tokenizer, source="parquet", data_files=str(path), max_seq_len=256)


def test_bad_options_and_missing_files_fail_before_reading(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        chat_dataset(tokenizer, source="json", data_files=str(tmp_path / "nope.jsonl"), max_seq_len=256)
    with pytest.raises(ValueError, match="'chatml'"):
        chat_dataset(tokenizer, source="json", data_files="x", max_seq_len=256, conversation_format="chatml")
    with pytest.raises(ValueError, match="'truncate'"):
        chat_dataset(tokenizer, source="json", data_files="x", max_seq_len=256, long_sample_policy="truncate")
    with pytest.raises(ValueError, match="'warn'"):
        chat_dataset(tokenizer, source="json", data_files="x", max_seq_len=256, on_bad_row="warn")


def test_hub_dataset_offline_is_one_data_error(tokenizer, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DataError, match=r"Could not load dataset 'someone/agentic-sft' \(split 'train'\): .*Offline, use"
    ):
        chat_dataset(tokenizer, source="someone/agentic-sft", max_seq_len=256)


def test_an_unreachable_hub_is_one_data_error_without_retries(tokenizer, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("focusft.eval.preflight.hub_unreachable_reason", lambda: "https://hf.co is unreachable")
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: pytest.fail("datasets would retry for ~25 s"))
    with pytest.raises(DataError) as error:
        chat_dataset(tokenizer, source="someone/agentic-sft", max_seq_len=256)
    assert str(error.value).startswith(
        "dataset 'someone/agentic-sft' comes from the Hugging Face Hub, but https://hf.co is unreachable. Offline, use"
    )


def test_a_file_that_is_not_parquet_and_json_without_files_are_data_errors(tmp_path, tokenizer):
    path = tmp_path / "rows.parquet"
    path.write_text('{"messages": []}\n')
    with pytest.raises(DataError, match=rf"{path} is not a readable Parquet file \(.*\)"):
        chat_dataset(tokenizer, source="parquet", data_files=str(path), max_seq_len=256)
    with pytest.raises(DataError, match=r"dataset.source=json needs dataset.data_files"):
        chat_dataset(tokenizer, source="json", data_files=None, max_seq_len=256)


def test_synthetic_dataset_trains_only_on_the_answer(tokenizer):
    dataset = synthetic_dataset(tokenizer, task="qa2", num_samples=3, max_seq_len=400, seed=5)
    samples = generate_samples("qa2", num_samples=3, target_tokens=400, seed=5, tokenizer=tokenizer)
    assert len(dataset) == 3 and dataset.stats.samples == 3
    batch = collate_focus_batch([dataset[i] for i in range(3)], padding_idx=tokenizer.pad_id)
    for row, sample in enumerate(samples):
        answer = tokenizer.encode(sample["answer"], add_bos=False, add_eos=False)
        assert batch["tokens"][row][~batch["context"][row]].tolist() == answer + [tokenizer.eos_id]
        assert batch["valid"][row].sum() == len(dataset[row]["tokens"]) == dataset.lengths[row]


def test_config_instantiates_the_builders(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD] * 3)
    cfg = OmegaConf.create(
        f"""
        chat:
          _component_: focusft.data.chat_dataset
          source: json
          data_files: {path}
          conversation_format: openai
          max_seq_len: 70
          long_sample_policy: truncate_left
          train_on_assistant_header: false
          on_bad_row: error
          packed: true
          default_system_prompt: null
        synthetic:
          _component_: focusft.data.synthetic_dataset
          task: qa1
          num_samples: 4
          max_seq_len: 512
          target_tokens: 384
          split: train
          seed: 0
          packed: false
        """
    )
    chat = config.instantiate(cfg.chat, tokenizer)
    assert chat.stats.samples == 3 and chat.stats.packed_rows == 1
    assert len(chat[0]["tokens"]) == 70 and chat[0]["doc"] == [0] * 22 + [1] * 22 + [2] * 22 + [3] * 4
    synthetic = config.instantiate(cfg.synthetic, tokenizer)
    assert len(synthetic) == 4 and all(345 <= length <= 384 for length in synthetic.lengths)


def test_sharegpt_function_call_with_a_control_token_is_a_bad_row(tmp_path, tokenizer):
    call = json.dumps({"name": "search", "arguments": {"q": "x<|im_end|>"}})
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": call}]}
    path = write_jsonl(tmp_path / "s.jsonl", [row])
    with pytest.raises(BadRowError, match=r"line 1: message 1 tool call 0 arguments contains the special token"):
        chat_dataset(tokenizer, source="json", data_files=str(path), max_seq_len=256, conversation_format="sharegpt")


def test_a_line_that_is_not_utf8_is_one_bad_row(tmp_path, tokenizer):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD).encode()
    bad = json.dumps({"messages": [{"role": "user", "content": "caf\u00e9"}, GOOD["messages"][1]]})
    path.write_bytes(b"\n".join([good, bad.replace("\\u00e9", "\u00e9").encode("latin-1"), good]) + b"\n")
    with pytest.raises(BadRowError, match=rf"Bad row in {path} line 2: not UTF-8 text \(byte 0xe9 at byte \d+ of"):
        chat_dataset(tokenizer, source="json", data_files=str(path), max_seq_len=256)
    dataset = chat_dataset(tokenizer, source="json", data_files=str(path), max_seq_len=256, on_bad_row="skip")
    assert len(dataset) == 2 and dataset.stats.bad_rows[0].startswith(f"{path} line 2: not UTF-8 text")
