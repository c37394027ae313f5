"""Qwen3 and Llama 3.1 training tokens equal what transformers renders with each family's official template.

The templates are kept verbatim in tests/fixtures and rendered by transformers'
``apply_chat_template``, then encoded by the HF tokenizer of the tiny checkpoint: nothing of
the project's rendering makes the expected tokens. The trained tokens (context flag off) are
checked to be exactly the assistant turns: each run of them ends with the family's end-of-turn
token and follows an assistant header.
"""

import copy
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from focusft.analysis.segments import Segment, token_segments
from focusft.data.messages import ConversationError
from focusft.models import family_for_tokenizer, get_family
from focusft.tiny import (
    load_tiny_llama3_tokenizer,
    load_tiny_tokenizer,
    write_tiny_llama3_tokenizer,
    write_tiny_tokenizer,
)
from tests.data.tool_calls import TOOLS, call

FIXTURES = Path(__file__).parents[1] / "fixtures"
TEMPLATES = {"qwen3": "qwen3_chat_template.jinja", "llama3": "llama3_1_instruct_chat_template.jinja"}

CONVERSATIONS = {
    "no system": [
        {"role": "user", "content": "Where is Mary?"},
        {"role": "assistant", "content": "Mary is in the kitchen."},
    ],
    "system, multi-turn, reasoning": [
        {"role": "system", "content": "Answer from the story."},
        {"role": "user", "content": "Mary went to the garden.\nWhere is Mary?"},
        {"role": "assistant", "content": "garden.", "reasoning_content": "The story says garden."},
        {"role": "user", "content": "And John?"},
        {"role": "assistant", "content": "No idea (ça va).", "reasoning_content": "\nJohn is not in it.\n"},
    ],
    "one tool call": [
        {"role": "user", "content": "Where is the key?"},
        {"role": "assistant", "tool_calls": [call("search", {"q": "key", "limit": 3})]},
        {"role": "tool", "content": "The key is in the office."},
        {"role": "assistant", "content": "office"},
    ],
    "parallel tool calls, reasoning": [
        {"role": "user", "content": "Where is the key?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Search first.",
            "tool_calls": [call("search", {"q": "key"}), call("read_note", {"note_id": 7, "tags": ["a", "b"]})],
        },
        {"role": "tool", "content": '{"hits": [{"id": 7}]}'},
        {"role": "tool", "content": "The key is in the office."},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call("search", {"q": "office"})]},
        {"role": "tool", "content": "office: a desk.\n"},
        {"role": "assistant", "content": "office"},
    ],
}
CASES = {
    "qwen3": [(name, tools) for name in CONVERSATIONS for tools in (None, TOOLS)],
    # Llama 3.1's template allows one tool call per message (tested below).
    "llama3": [(name, tools) for name in CONVERSATIONS if "parallel" not in name for tools in (None, TOOLS)],
}


def for_transformers(turns):
    """Tool-call arguments as objects, as transformers' templates expect; no ``content`` key on pure calls."""
    turns = copy.deepcopy(turns)
    for turn in turns:
        for tool_call in turn.get("tool_calls", []):
            tool_call["function"]["arguments"] = json.loads(tool_call["function"]["arguments"])
        if turn.get("content") is None and "tool_calls" in turn:
            turn["content"] = ""
    return turns


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """``{family: (torchtune tokenizer, HF tokenizer rendering the fixture template)}``."""
    qwen3_dir = write_tiny_tokenizer(tmp_path_factory.mktemp("qwen3"), family="qwen3")
    llama3_dir = write_tiny_llama3_tokenizer(tmp_path_factory.mktemp("llama3"))
    pairs = {
        "qwen3": (load_tiny_tokenizer(qwen3_dir), qwen3_dir),
        "llama3": (load_tiny_llama3_tokenizer(llama3_dir), llama3_dir),
    }
    result = {}
    for family, (tokenizer, directory) in pairs.items():
        hf = AutoTokenizer.from_pretrained(str(directory))
        hf.chat_template = (FIXTURES / TEMPLATES[family]).read_text()
        result[family] = (tokenizer, hf)
    return result


@pytest.mark.parametrize(
    ("family_name", "name", "tools"),
    [(family, name, tools) for family, cases in CASES.items() for name, tools in cases],
    ids=lambda value: "tools" if isinstance(value, list) else str(value),
)
def test_training_tokens_equal_the_official_template(tokenizers, family_name, name, tools):
    tokenizer, hf = tokenizers[family_name]
    family = family_for_tokenizer(tokenizer)
    assert family.name == family_name
    turns = CONVERSATIONS[name]
    rendered = family.render(turns, tokenizer, tools=tools)

    text = hf.apply_chat_template(for_transformers(turns), tools=tools, tokenize=False)
    if family_name == "qwen3":  # the template's "\n" after the last <|im_end|> is never trained or generated
        assert text.endswith("<|im_end|>\n")
        text = text[:-1]
    assert rendered.tokens == hf.encode(text, add_special_tokens=False)

    turn_end = hf.convert_tokens_to_ids(family.turn_end)
    header = hf.encode(
        "<|im_start|>assistant\n" if family_name == "qwen3" else "<|start_header_id|>assistant<|end_header_id|>\n\n",
        add_special_tokens=False,
    )
    runs, start = [], None
    for index, context in enumerate([*rendered.context, True]):
        if not context and start is None:
            start = index
        elif context and start is not None:
            runs.append((start, index))
            start = None
    assert len(runs) == sum(turn["role"] == "assistant" for turn in turns)
    for begin, end in runs:
        assert rendered.tokens[end - 1] == turn_end
        assert rendered.tokens[begin - len(header) : begin] == header
        assert turn_end not in rendered.tokens[begin : end - 1]


def test_llama3_rejects_parallel_tool_calls_as_its_template_does(tokenizers):
    tokenizer, hf = tokenizers["llama3"]
    turns = CONVERSATIONS["parallel tool calls, reasoning"]
    with pytest.raises(Exception, match="only supports single tool-calls"):
        hf.apply_chat_template(for_transformers(turns), tokenize=False)
    with pytest.raises(ConversationError, match="makes 2 tool calls"):
        get_family("llama3").render(turns, tokenizer)


def test_each_tiny_tokenizer_carries_its_official_template(tokenizers):
    for family, (_, hf) in tokenizers.items():
        shipped = AutoTokenizer.from_pretrained(hf.name_or_path).chat_template
        assert shipped == (FIXTURES / TEMPLATES[family]).read_text()


@pytest.mark.parametrize("family_name", sorted(TEMPLATES))
def test_attention_segments_follow_each_familys_turn_headers(tokenizers, family_name):
    """focusft-attention's segments: trained tokens are response, the tool output's text is tool, the rest prompt."""
    tokenizer, hf = tokenizers[family_name]
    rendered = get_family(family_name).render(CONVERSATIONS["one tool call"], tokenizer)
    segments = token_segments(rendered.tokens, tokenizer, sink_tokens=0).tolist()
    assert all(segments[i] == Segment.RESPONSE for i, context in enumerate(rendered.context) if not context)
    output = hf.encode("The key is in the office.", add_special_tokens=False)
    tool = [i for i, segment in enumerate(segments) if segment == Segment.TOOL]
    text = hf.decode([rendered.tokens[i] for i in tool])
    assert "The key is in the office." in text and len(tool) >= len(output)
    assert segments[: rendered.spans[1][0]] == [Segment.PROMPT] * rendered.spans[1][0]  # system / user turns
