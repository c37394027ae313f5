"""Training tokens equal what transformers renders with Qwen2.5-Instruct's real chat template.

The template is kept verbatim in tests/fixtures and rendered by transformers'
``apply_chat_template`` (its Jinja environment and ``tojson``), then tokenized by the HF
tokenizer: nothing of the project's rendering is used for the expected tokens. The
tokenizer is trained on rendered conversations so that its BPE merges span the joints of
the template (``>\\n``, ``}\\n``, ``.\\n``), where encoding a turn in pieces would differ.
"""

import copy
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from focusft.data.messages import QWEN_DEFAULT_SYSTEM, openai_to_messages, sharegpt_to_messages
from focusft.data.tokenize import tokenize_conversation
from focusft.tiny import CHAT_TEMPLATE, load_tiny_tokenizer, tiny_corpus, write_tiny_tokenizer
from tests.data.tool_calls import TOOLS, call

TEMPLATE = (Path(__file__).parents[1] / "fixtures" / "qwen2_5_instruct_chat_template.jinja").read_text()

CONVERSATIONS = {
    "no system, no tools": [
        {"role": "user", "content": "Where is Mary?"},
        {"role": "assistant", "content": "Mary is in the kitchen."},
    ],
    "system, multi-turn": [
        {"role": "system", "content": "Answer from the story."},
        {"role": "user", "content": "Mary went to the garden.\nWhere is Mary?"},
        {"role": "assistant", "content": "garden."},
        {"role": "user", "content": "And John?"},
        {"role": "assistant", "content": "No idea — the story says nothing (ça va)."},
    ],
    "parallel tool calls": [
        {"role": "user", "content": "Where is the key?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("search", {"q": "key"}), call("read_note", {"note_id": 7, "tags": ["a", "b"]})],
        },
        {"role": "tool", "tool_call_id": "call_search", "content": '{"hits": [{"id": 7}]}'},
        {"role": "tool", "tool_call_id": "call_read_note", "content": "The key is in the office."},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call("search", {"q": "office"})]},
        {"role": "tool", "content": "office: a desk.\n"},
        {"role": "assistant", "content": "office"},
    ],
}
CASES = [
    ("no system, no tools", None),
    ("system, multi-turn", None),
    ("no system, no tools", TOOLS),
    ("system, multi-turn", TOOLS),
    ("parallel tool calls", TOOLS),
    ("parallel tool calls", None),
]


def for_transformers(messages):
    """The same conversation with tool-call arguments as objects, as transformers' templates expect."""
    messages = copy.deepcopy(messages)
    for message in messages:
        for tool_call in message.get("tool_calls") or []:
            tool_call["function"]["arguments"] = json.loads(tool_call["function"]["arguments"])
    return messages


@pytest.fixture(scope="module")
def chat_tokenizer_dir(tmp_path_factory):
    """A tiny BPE trained on template-rendered conversations, so merges cross the template's joints."""
    renderer = AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path_factory.mktemp("renderer"))))
    rendered = []
    for name, tools in CASES:
        text = renderer.apply_chat_template(
            for_transformers(CONVERSATIONS[name]), tools=tools, chat_template=TEMPLATE, tokenize=False
        )
        rendered += [text] * 20
    return write_tiny_tokenizer(tmp_path_factory.mktemp("chat_tokenizer"), corpus=tiny_corpus() + rendered)


@pytest.fixture(scope="module")
def hf_tokenizer(chat_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(chat_tokenizer_dir))


def hf_tokens(hf_tokenizer, messages, tools):
    ids = hf_tokenizer.apply_chat_template(
        for_transformers(messages), tools=tools, chat_template=TEMPLATE, tokenize=True, return_dict=False
    )
    return list(ids)


def test_the_tokenizer_merges_across_template_joints(hf_tokenizer):
    """Otherwise the comparisons below could not tell whole-turn encoding from piecewise encoding."""
    for joint in (">\n", "}\n", ".\n"):
        assert len(hf_tokenizer.encode(joint, add_special_tokens=False)) == 1, joint


@pytest.mark.parametrize("name, tools", CASES)
def test_training_tokens_equal_the_qwen2_5_template(chat_tokenizer_dir, hf_tokenizer, name, tools):
    tokenizer = load_tiny_tokenizer(chat_tokenizer_dir)
    row = {"messages": CONVERSATIONS[name], "tools": tools}
    ours = tokenize_conversation(openai_to_messages(row), tokenizer).tokens
    expected = hf_tokens(hf_tokenizer, CONVERSATIONS[name], tools)
    # The template ends with "<|im_end|>\n"; training ends at the eos <|im_end|>.
    assert expected[-1:] == hf_tokenizer.encode("\n", add_special_tokens=False)
    assert ours == expected[:-1]


def test_tool_outputs_in_one_turn_are_one_span(chat_tokenizer_dir):
    tokenizer = load_tiny_tokenizer(chat_tokenizer_dir)
    conversation = tokenize_conversation(
        openai_to_messages({"messages": CONVERSATIONS["parallel tool calls"]}), tokenizer
    )
    assert conversation.roles == ["system", "user", "assistant", "ipython", "assistant", "ipython", "assistant"]
    assert conversation.spans[0][0] == 0 and conversation.spans[-1][1] == len(conversation)
    assert all(a[1] == b[0] for a, b in zip(conversation.spans, conversation.spans[1:]))


def test_the_default_system_prompt_is_qwens_and_configurable(chat_tokenizer_dir, hf_tokenizer):
    tokenizer = load_tiny_tokenizer(chat_tokenizer_dir)
    messages = CONVERSATIONS["no system, no tools"]
    assert QWEN_DEFAULT_SYSTEM == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    custom = tokenize_conversation(
        openai_to_messages({"messages": messages}, default_system_prompt="Be brief."), tokenizer
    )
    expected = hf_tokens(hf_tokenizer, [{"role": "system", "content": "Be brief."}, *messages], None)
    assert custom.tokens == expected[:-1]
    bare = tokenize_conversation(openai_to_messages({"messages": messages}, default_system_prompt=None), tokenizer)
    assert bare.roles == ["user", "assistant"]
    assert bare.tokens == expected[len(expected) - 1 - len(bare.tokens) : -1]  # the same turns, no system turn
    sharegpt = {"conversations": [{"from": "human", "value": "Where is Mary?"}, {"from": "gpt", "value": "kitchen"}]}
    assert sharegpt_to_messages(sharegpt)[0].text_content == QWEN_DEFAULT_SYSTEM


def test_the_tiny_tokenizer_carries_the_qwen2_5_template(tmp_path):
    assert CHAT_TEMPLATE == TEMPLATE
    config = json.loads((write_tiny_tokenizer(tmp_path) / "tokenizer_config.json").read_text())
    assert config["chat_template"] == TEMPLATE
